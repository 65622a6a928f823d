"""Segmentation metrics from a confusion matrix (NumPy only)."""

from __future__ import annotations

import numpy as np

from aspp_deploy.data.voc import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates ``matrix[true, pred]`` over images; IoU is computed over the whole set."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, pred: np.ndarray) -> None:
        if target.shape != pred.shape:
            raise ValueError(f"target {target.shape} and prediction {pred.shape} differ in shape")
        keep = target != IGNORE_INDEX
        t = target[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        self.matrix += np.bincount(t * self.num_classes + p,
                                   minlength=self.num_classes**2).reshape(self.num_classes, -1)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both targets and predictions."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")
