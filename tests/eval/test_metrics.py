import numpy as np
import pytest

from aspp_deploy.eval.metrics import ConfusionMatrix


def test_miou_on_hand_made_masks():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    # class 0: tp 3, fp 2 (pred 0 where target 1, 2), fn 1 -> 3/6
    # class 1: tp 3, fp 1, fn 1 -> 3/5 ; class 2: tp 1, fp 0, fn 1 -> 1/2
    assert np.allclose(cm.iou(), [3 / 6, 3 / 5, 1 / 2])
    assert cm.miou() == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert cm.pixel_accuracy() == pytest.approx(7 / 10)


def test_absent_class_is_nan_and_skipped():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    assert np.isnan(cm.iou()[1]) and cm.miou() == 1.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.zeros((2, 2), int), np.zeros((2, 3), int))
