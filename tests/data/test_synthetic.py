import numpy as np
import pytest
from PIL import Image

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.synthetic import CLASSES, SynthConfig, generate_sample
from aspp_deploy.data.voc import VOCSegmentation, load_mask
from aspp_deploy.errors import DatasetError

SMALL = SynthConfig(size=128, max_object=80)


def test_generation_is_deterministic_and_splits_differ():
    a_img, a_mask = generate_sample(0, "train", 3, SMALL)
    b_img, b_mask = generate_sample(0, "train", 3, SMALL)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    c_img, _ = generate_sample(0, "val", 3, SMALL)
    d_img, _ = generate_sample(0, "calib", 3, SMALL)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(c_img, d_img)


def test_classes_present_and_colour_does_not_give_the_class_away():
    per_class: dict[int, list[np.ndarray]] = {c: [] for c in range(1, len(CLASSES))}
    for i in range(40):
        img, mask = generate_sample(0, "train", i, SMALL)
        for c in per_class:
            if (mask == c).sum() > 50:
                per_class[c].append(img[mask == c].mean(0))
    assert len(CLASSES) - 1 >= 5
    means = np.array([np.mean(v, 0) for v in per_class.values() if v])
    assert len(means) == len(CLASSES) - 1, "every foreground class appears"
    # Mean colours of the classes are close to each other: colour carries no class signal.
    assert np.abs(means - means.mean(0)).max() < 30


def test_object_sizes_span_small_to_large():
    cfg = SynthConfig()
    extents = []
    for i in range(30):
        _, mask = generate_sample(0, "train", i, cfg)
        for c in range(1, len(CLASSES)):
            ys, xs = np.nonzero(mask == c)
            if len(ys):
                extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
    assert min(extents) <= 24 and max(extents) >= cfg.size // 2


def test_voc_layout_roundtrip(tiny_data):
    ds = VOCSegmentation(tiny_data, "val")
    assert len(ds) == 4
    with Image.open(ds[0].mask) as m:
        assert m.mode == "P"
    mask = load_mask(ds[0].mask, len(CLASSES))
    assert mask.max() < len(CLASSES)


def test_loader_errors(tmp_path, tiny_data):
    with pytest.raises(DatasetError, match="not found"):
        VOCSegmentation(tmp_path / "nope")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    with pytest.raises(DatasetError, match="missing"):
        VOCSegmentation(tmp_path, "val")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty"):
        VOCSegmentation(tmp_path, "val")
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((8, 8), 9, np.uint8), mode="L").save(bad)
    with pytest.raises(DatasetError, match="outside 0..5"):
        load_mask(bad, 6)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(DatasetError, match="mode RGB"):
        load_mask(rgb, 6)
    ignore = tmp_path / "ignore.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8), mode="L").save(ignore)
    assert (load_mask(ignore, 6) == 255).all()


def test_preprocess_normalises_and_roundtrips_dict():
    pre = Preprocess(4, 6)
    img = Image.fromarray(np.full((8, 12, 3), 255, np.uint8))
    x = pre(img)
    assert x.shape == (3, 4, 6) and x.dtype == np.float32
    expected = (1.0 - np.array(pre.mean)) / np.array(pre.std)
    assert np.allclose(x[:, 0, 0], expected, atol=1e-6)
    assert Preprocess.from_dict(pre.to_dict()) == pre
