"""Segmentation metrics from a confusion matrix (NumPy only)."""

from __future__ import annotations

import numpy as np

from aspp_deploy.data.voc import IGNORE_INDEX
from aspp_deploy.errors import DatasetError


def no_labelled_pixels(where: str = "the masks") -> DatasetError:
    """The error for a confusion matrix that measured nothing: every mask pixel was ``IGNORE_INDEX``."""
    return DatasetError(f"no labelled pixel was measured: every pixel of {where} is {IGNORE_INDEX} (ignore), so "
                        f"there is no mIoU or pixel accuracy to report; label the images' pixels with class ids")


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

    @property
    def measured(self) -> int:
        """Pixels counted (those not ``IGNORE_INDEX``)."""
        return int(self.matrix.sum())

    def miou(self) -> float:
        """Mean IoU over the classes present in targets or predictions. DatasetError when no pixel was
        measured (every target pixel ignored): a NaN would be printed as a score and exit 0."""
        if not self.measured:
            raise no_labelled_pixels()
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def foreground_iou(self) -> float | None:
        """Binary (2-class) models: IoU of class 1, the foreground (1.0 when neither the targets nor
        the predictions have any); None for other models."""
        if self.num_classes != 2:
            return None
        v = self.iou()[1]
        return 1.0 if np.isnan(v) else float(v)


def image_score(target: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """One image's task metric: foreground IoU for binary models (1.0 when both have no foreground),
    else the mean IoU over the classes present in either (1.0 when nothing is scored)."""
    keep = target != IGNORE_INDEX
    t, p = target[keep].astype(np.int64), pred[keep].astype(np.int64)
    if num_classes == 2:
        tf, pf = t == 1, p == 1
        union = int((tf | pf).sum())
        return 1.0 if union == 0 else int((tf & pf).sum()) / union
    m = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, -1)
    tp = np.diag(m).astype(np.float64)
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 1.0
