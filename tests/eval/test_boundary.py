import numpy as np
import pytest

from aspp_deploy.eval.boundary import BoundaryF, boundary_map, dilate


def square(size=20, lo=5, hi=15, shift=0):
    m = np.zeros((size, size), np.int64)
    m[lo + shift:hi + shift, lo:hi] = 1
    return m


def test_boundary_map_of_a_square():
    b = boundary_map(square())
    # both sides of each edge: inside ring 10^2-8^2=36; outside, 4-neighbours of the square
    # (10 per side, no corners) = 40
    assert b.sum() == 36 + 40


def test_dilate_is_chebyshev():
    m = np.zeros((7, 7), bool)
    m[3, 3] = True
    assert dilate(m, 2).sum() == 25


def test_identical_maps_score_one_and_shift_beyond_tolerance_scores_lower():
    f = BoundaryF(tolerance=1)
    f.update(square(), square())
    assert f.score() == 1.0
    near, far = BoundaryF(tolerance=1), BoundaryF(tolerance=1)
    near.update(square(), square(shift=1))
    far.update(square(), square(shift=4))
    assert near.score() > far.score()
    # shift by 4 rows: only the vertical edges (minus the 4 rows that moved) still match
    b_ref, b_pred = boundary_map(square()), boundary_map(square(shift=4))
    p = (b_pred & dilate(b_ref, 1)).sum() / b_pred.sum()
    r = (b_ref & dilate(b_pred, 1)).sum() / b_ref.sum()
    assert far.score() == pytest.approx(2 * p * r / (p + r))


def test_empty_maps():
    f = BoundaryF()
    f.update(np.zeros((5, 5), int), np.zeros((5, 5), int))
    assert f.score() == 1.0
    g = BoundaryF()
    g.update(np.zeros((20, 20), int), square())
    assert g.score() == 0.0
