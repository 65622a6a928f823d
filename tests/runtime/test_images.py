"""Post-processing shortcuts give NumPy's own answers: the two-class argmax is one comparison, with
NumPy's rules for ties and NaN; the value table of ``Preprocess.normalize`` gives the formula's bits."""

from __future__ import annotations

import numpy as np
import pytest

from aspp_deploy.runtime.images import class_map
from aspp_deploy.runtime.preprocess import Preprocess


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_two_class_argmax_is_numpys_with_ties_and_nan(dtype):
    rng = np.random.default_rng(0)
    for trial in range(60):
        scores = rng.standard_normal((2, 17, 23)).astype(dtype)
        if trial % 3 == 0:
            tie = rng.random((17, 23)) < 0.3
            scores[1][tie] = scores[0][tie]
        if trial % 2 == 0:
            scores[0][rng.random((17, 23)) < 0.1] = np.nan
            scores[1][rng.random((17, 23)) < 0.1] = np.nan
        expected = scores.argmax(0)
        for output in (scores, scores[None]):
            got = class_map(output)
            assert got.shape == expected.shape and np.array_equal(got, expected), trial
    three = rng.standard_normal((3, 5, 7)).astype(np.float32)
    assert np.array_equal(class_map(three), three.argmax(0))


@pytest.mark.parametrize("spec", [{}, {"layout": "NHWC"}, {"channel_order": "BGR"},
                                  {"scale": 1.0, "mean": (127.5, 127.5, 127.5), "std": (127.5, 127.5, 127.5)}])
def test_normalize_gives_the_formulas_bits(spec):
    pre = Preprocess(9, 11, **spec)
    rgb = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    ordered = rgb[..., ::-1] if pre.channel_order == "BGR" else rgb
    x = ordered.astype(np.float32) * np.float32(pre.scale)
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    expected = x if pre.layout == "NHWC" else x.transpose(2, 0, 1)
    got = pre.normalize(rgb)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and np.array_equal(got, expected)
    batch = np.stack([ordered, ordered[::-1]])
    assert np.array_equal(pre.from_pixels(batch)[0], expected)


@pytest.mark.parametrize("num_classes", [0, 2, 7, 300])
def test_class_areas_counts_as_bincount(num_classes):
    from aspp_deploy.runtime.images import class_areas

    rng = np.random.default_rng(3)
    for mask in (rng.integers(0, 5, (48, 64)).astype(np.uint8),          # a byte mask: Pillow's histogram
                 np.full((5, 7), 255, np.uint8), np.zeros((4, 4), np.uint8),
                 rng.integers(0, 5, (48, 64)).astype(np.uint8)[:, ::2],   # not contiguous
                 rng.integers(0, 400, (20, 30)).astype(np.int32)):        # wider ids: bincount
        expected = np.bincount(mask.ravel().astype(np.int64), minlength=max(num_classes, 1))
        got = class_areas(mask, num_classes)
        assert got.dtype == np.int64 and np.array_equal(got, expected), (mask.dtype, mask.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("classes", [3, 6, 21, 256])
def test_many_class_argmax_is_numpys_with_ties_and_nan(dtype, classes):
    rng = np.random.default_rng(classes)
    scores = rng.standard_normal((classes, 24, 32)).astype(dtype)
    scores[:, :4] = np.round(scores[:, :4])            # ties between classes: the first wins
    scores[:, 4, :] = 0.0                               # every class tied
    scores[1, 5, :] = -0.0
    scores[rng.integers(0, classes), 6, 3] = np.nan     # NaN: NumPy picks the first NaN
    scores[classes - 1, 7, 5] = np.nan
    scores[0, 7, 5] = np.nan
    scores[:, 8, 8] = np.nan
    scores[classes - 1, 9, :] = np.inf
    scores[2, 10, :] = -np.inf
    ids = class_map(scores)
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, np.argmax(scores, axis=0))
    np.testing.assert_array_equal(class_map(scores[None]), np.argmax(scores, axis=0))  # a batch of one


def test_class_ids_of_an_empty_batch_and_a_writable_single_input():
    from aspp_deploy.backends.base import class_ids
    from aspp_deploy.runtime.images import stack_inputs

    assert class_ids(np.zeros((0, 6, 8, 8), np.float32), False).shape == (0, 8, 8)
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels.setflags(write=False)  # a PIL image's array: the batch is a copy the caller may write to
    batch = stack_inputs([pixels], 1)
    assert batch.shape == (1, 4, 4, 3) and batch.flags.writeable
    scores = np.zeros((3, 4, 4), np.float32)
    assert np.shares_memory(stack_inputs([scores], 1), scores)  # a fresh float input: a view, no copy
