"""The one preprocessing (geometry, pixels, layout) and its inverse for masks; the model spec."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.errors import InputError
from aspp_deploy.spec import GraphFacts, ModelSpec, load_spec, resolve, spec_from_dict


def striped(w: int, h: int) -> Image.Image:
    """Columns coloured by x, so geometry can be read back from pixel values."""
    x = np.tile(np.arange(w, dtype=np.uint8)[None, :, None], (h, 1, 3))
    return Image.fromarray(x)


def test_letterbox_pads_symmetrically_and_restore_cuts_the_padding():
    pre = Preprocess(64, 64, policy="letterbox", pad_value=(7, 7, 7))
    img = Image.new("RGB", (128, 64), (200, 100, 50))  # 2:1 -> 64x32 content, 16 rows of padding each side
    placed = np.asarray(pre.resize_image(img))
    assert placed.shape == (64, 64, 3)
    assert (placed[:16] == 7).all() and (placed[48:] == 7).all() and (placed[16:48] == [200, 100, 50]).all()
    ids = np.zeros((64, 64), np.uint8)
    ids[:16], ids[48:] = 9, 9          # predictions on the padding must vanish
    ids[16:48, 32:] = 1                # right half of the content
    back = pre.restore(ids, (128, 64))
    assert back.shape == (64, 128) and 9 not in back
    assert (back[:, 64:] == 1).all() and (back[:, :64] == 0).all()


def test_center_crop_covers_the_input_and_restore_extends_the_margins():
    pre = Preprocess(32, 32, policy="center_crop", resize="nearest")
    img = striped(64, 32)   # short side 32 fits: 64x32, then columns 16..47 are kept
    placed = np.asarray(pre.resize_image(img))
    assert placed.shape == (32, 32, 3) and placed[0, 0, 0] == 16 and placed[0, -1, 0] == 47
    ids = np.zeros((32, 32), np.uint8)
    ids[:, 0], ids[:, -1] = 3, 4
    back = pre.restore(ids, (64, 32))
    assert back.shape == (32, 64)
    assert (back[:, :17] == 3).all() and (back[:, 47:] == 4).all()  # margins take the nearest prediction


def test_stretch_restore_is_a_nearest_resize():
    pre = Preprocess(16, 16)
    ids = np.arange(256, dtype=np.int32).reshape(16, 16) % 5
    back = pre.restore(ids, (32, 48))
    assert back.shape == (48, 32) and set(np.unique(back)) <= set(range(5))


def test_bgr_nhwc_scale_and_mean_are_applied_in_the_model_channel_order():
    img = Image.new("RGB", (4, 2), (10, 20, 30))
    pre = Preprocess(2, 4, mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 4.0), scale=1.0, layout="NHWC", channel_order="BGR")
    x = pre(img)
    assert x.shape == (2, 4, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [(30 - 1) / 1, (20 - 2) / 2, (10 - 3) / 4])
    assert pre.input_shape(5) == (5, 2, 4, 3)
    assert Preprocess(2, 4)(img).shape == (3, 2, 4)


def test_old_manifest_records_keep_their_meaning():
    old = {"height": 8, "width": 8, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "bilinear",
           "layout": "NCHW", "channel_order": "RGB"}
    pre = Preprocess.from_dict(old)
    assert (pre.policy, pre.scale) == ("stretch", 1 / 255)
    assert Preprocess.from_dict(pre.to_dict()) == pre


@pytest.mark.parametrize("bad", [{"policy": "zoom"}, {"layout": "CHW"}, {"std": (1.0, 0.0, 1.0)},
                                 {"scale": float("nan")}, {"pad_value": (0, 0, 300)}])
def test_impossible_preprocessing_is_refused(bad):
    with pytest.raises(ValueError):
        Preprocess(8, 8, **bad)


def test_spec_file_yaml_and_flags_override(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("input:\n  height: 96\n  width: 128\n  layout: NHWC\n  resize: letterbox\n"
                 "classes: [a, b, c]\noutput: logits\n")
    spec = load_spec(f).merged(width=160, channel_order="BGR")
    r = resolve(spec, GraphFacts(num_classes=3, output_kind="logits"))
    pre = r.preprocess
    assert (pre.height, pre.width, pre.layout, pre.channel_order, pre.policy) == (96, 160, "NHWC", "BGR", "letterbox")
    assert r.classes == ["a", "b", "c"] and len(r.palette) == 3
    assert not any("channel order" in a or "resize policy" in a for a in r.assumed)
    assert any("ImageNet" in a for a in r.assumed)  # mean/std were not given: said


@pytest.mark.parametrize("raw, facts, message", [
    ({"classes": ["a", "b"]}, GraphFacts(num_classes=3), "a class count of 2 given, the model has 3"),
    ({"input": {"height": 64}}, GraphFacts(height=96, width=96, num_classes=2), "static height of 96"),
    ({"input": {"layout": "NCHW"}}, GraphFacts(layout="NHWC", num_classes=2), "layout NCHW given"),
    ({"output": "class_ids"}, GraphFacts(num_classes=2, output_kind="logits"), "floating-point output"),
    ({"input": {"size": 3}}, None, "unknown keys size"),
    ({"input": {"resize": "zoom"}}, None, "resize 'zoom' is not one of"),
    ({"palette": [[0, 0, 256]]}, None, "palette must be"),
    (["not", "a", "mapping"], None, "must be a mapping"),
])
def test_spec_contradictions_and_malformed_specs(raw, facts, message):
    with pytest.raises(InputError, match=message):
        spec = spec_from_dict(raw)
        resolve(spec, facts or GraphFacts(num_classes=2))


def test_class_ids_model_needs_the_class_count():
    with pytest.raises(InputError, match="number of classes is unknown"):
        resolve(ModelSpec(), GraphFacts(output_kind="class_ids"))
    r = resolve(ModelSpec(num_classes=4), GraphFacts(output_kind="class_ids"))
    assert r.classes == [f"class_{i}" for i in range(4)] and r.output_kind == "class_ids"


@pytest.mark.parametrize("name", ["../../../../tmp/escaped", "/etc/passwd", "sub\\\\x", ".hidden"])
def test_split_list_names_cannot_leave_the_dataset(tmp_path, name):
    """A val.txt naming a path outside the dataset is refused before anything is read or written
    (compare once wrote an overlay to /tmp/x.png from such a name)."""
    from aspp_deploy.data.voc import VOCSegmentation
    from aspp_deploy.errors import DatasetError

    lists = tmp_path / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text(f"{name}\n")
    with pytest.raises(DatasetError, match="plain file stem"):
        VOCSegmentation(tmp_path, "val")
