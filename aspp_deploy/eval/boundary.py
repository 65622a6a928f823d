"""Boundary F-score between two label maps (reduced precision errs first at object edges).

A boundary pixel is one whose 4-neighbour has another label. Precision: the fraction of the
candidate's boundary pixels within ``tolerance`` pixels (Chebyshev distance) of a reference
boundary pixel; recall: the same the other way round; F = 2PR / (P + R).
"""

from __future__ import annotations

import numpy as np

BOUNDARY_TOLERANCE_PX = 2


def boundary_map(labels: np.ndarray) -> np.ndarray:
    b = np.zeros(labels.shape, dtype=bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    b[1:, :] |= dv
    b[:-1, :] |= dv
    b[:, 1:] |= dh
    b[:, :-1] |= dh
    return b


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation, separable: rows then columns."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for r in range(1, radius + 1):
            if axis == 0:
                out[r:, :] |= src[:-r, :]
                out[:-r, :] |= src[r:, :]
            else:
                out[:, r:] |= src[:, :-r]
                out[:, :-r] |= src[:, r:]
    return out


class BoundaryF:
    """Accumulates boundary matches over many images; ``score`` is the dataset-level F."""

    def __init__(self, tolerance: int = BOUNDARY_TOLERANCE_PX) -> None:
        self.tolerance = tolerance
        self.matched_pred = self.n_pred = self.matched_ref = self.n_ref = 0

    def update(self, reference: np.ndarray, prediction: np.ndarray) -> None:
        br, bp = boundary_map(reference), boundary_map(prediction)
        self.matched_pred += int((bp & dilate(br, self.tolerance)).sum())
        self.matched_ref += int((br & dilate(bp, self.tolerance)).sum())
        self.n_pred += int(bp.sum())
        self.n_ref += int(br.sum())

    def score(self) -> float:
        if self.n_pred == 0 and self.n_ref == 0:
            return 1.0
        p = self.matched_pred / self.n_pred if self.n_pred else 0.0
        r = self.matched_ref / self.n_ref if self.n_ref else 0.0
        return 2 * p * r / (p + r) if p + r else 0.0
