"""ONNX Runtime against the model's own runtime (PyTorch, or the original file) on the same inputs.

The masks decide: argmax agreement must reach ``PARITY_MIN_AGREEMENT``. The scores are judged
relative to the output's scale (the largest |value| the reference produced), not absolutely: a
torchvision DeepLabV3 whose logits reach 1500 differs by ~2e-3 for a relative error of 1.5e-6,
while a model whose logits never exceed 0.004 would pass any absolute 1e-3 without meaning it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Tolerances for an FP32 export (named here, used by export and its tests).
PARITY_MAX_REL = 1e-3       # largest |score difference| allowed, as a fraction of the output's scale
PARITY_MIN_AGREEMENT = 0.9999  # fraction of pixels whose argmax must agree (the decisive figure)


@dataclass
class ParityCase:
    name: str
    shape: list[int]
    max_abs: float
    mean_abs: float
    argmax_agreement: float
    scale: float = 0.0  # the largest |value| of the reference output (0: class ids)

    @property
    def max_rel(self) -> float:
        """max_abs as a fraction of the output's scale (class ids: the absolute difference)."""
        return self.max_abs / self.scale if self.scale > 0 else self.max_abs


@dataclass
class ParityReport:
    cases: list[ParityCase]
    max_rel_tol: float = PARITY_MAX_REL
    min_agreement: float = PARITY_MIN_AGREEMENT

    @property
    def max_abs(self) -> float:
        values = [c.max_abs for c in self.cases]
        return float("nan") if any(np.isnan(v) for v in values) else max(values)

    @property
    def max_rel(self) -> float:
        values = [c.max_rel for c in self.cases]
        return float("nan") if any(np.isnan(v) for v in values) else max(values)

    @property
    def scale(self) -> float:
        return max(c.scale for c in self.cases)

    @property
    def mean_abs(self) -> float:
        return float(np.mean([c.mean_abs for c in self.cases]))

    @property
    def argmax_agreement(self) -> float:
        return min(c.argmax_agreement for c in self.cases)

    @property
    def ok(self) -> bool:
        finite = all(np.isfinite(c.max_abs) and np.isfinite(c.argmax_agreement) for c in self.cases)
        return bool(self.cases) and finite and self.max_rel <= self.max_rel_tol \
            and self.argmax_agreement >= self.min_agreement

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict:
        return {"ok": self.ok, "max_abs": self.max_abs, "mean_abs": self.mean_abs, "output_scale": self.scale,
                "max_rel": self.max_rel, "argmax_agreement": self.argmax_agreement, "max_rel_tol": self.max_rel_tol,
                "min_agreement": self.min_agreement, "cases": [asdict(c) for c in self.cases]}


def compare_outputs(name: str, reference: np.ndarray, candidate: np.ndarray,
                    reference_ids: bool = False) -> ParityCase:
    """Reference logits (N,C,H,W) vs candidate logits, or candidate class ids (N,H,W); with
    ``reference_ids`` the reference itself is class ids (a model that outputs them)."""
    if reference_ids:
        ids = candidate.reshape(reference.shape).astype(np.int64)
        ref = reference.astype(np.int64)
        diff = np.abs(ref - ids)
        return ParityCase(name, list(reference.shape), float(diff.max()), float(diff.mean()),
                          float((ids == ref).mean()))
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    ref_ids = reference.argmax(1)
    if candidate.ndim == reference.ndim:
        diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
        max_abs, mean_abs = float(diff.max()), float(diff.mean())
        ids = candidate.argmax(1)
    else:  # class ids: logits are not there to compare
        max_abs = mean_abs = 0.0
        ids = candidate.astype(np.int64)
    return ParityCase(name, list(reference.shape), max_abs, mean_abs, float((ids == ref_ids).mean()), scale)
