"""The runtime's parts that need no TensorRT: the per-version build choice, post-processing, overlays
and the example app's image loop (driven by a stand-in for ``Segmenter.predict_batch``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime import class_map, colorize, overlay, postprocess
from aspp_deploy.runtime.app import find_inputs, segment_images
from aspp_deploy.runtime.builder import choose_build, lint_profile
from aspp_deploy.runtime.manifest import ArtifactEntry
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.trt.plan import PlanError

ALL = ["8.5", "8.6", "10.3", "10.x", "11"]


def models(fp16_versions=ALL, int8_versions=ALL, with_fp16=True, with_int8=True) -> dict:
    """A bundle's verified manifest entries: the FP32 ONNX and its variants, with these pre-flight results."""
    found = {"model.onnx": {"precision": "fp32"}}
    if with_fp16:
        found["model.fp16.onnx"] = {"precision": "fp16", "target": "any", "source": {"onnx": "model.onnx"},
                                    "trt_versions": fp16_versions}
    if with_int8:
        found["model.int8-trt.onnx"] = {"precision": "int8", "target": "trt", "source": {"onnx": "model.onnx"},
                                        "trt_versions": int8_versions}
        found["model.int8-trt.deepstream.onnx"] = {"precision": "int8", "target": "trt", "deepstream": True,
                                                   "source": {"onnx": "model.int8-trt.onnx"}}
    base = {"classes": ["background", "person"], "palette": [[0, 0, 0], [192, 0, 0]],
            "preprocess": Preprocess(64, 64).to_dict()}
    return {name: ArtifactEntry.from_dict({**base, **record}, name) for name, record in found.items()}


@pytest.mark.parametrize("version, onnx, kind, flags, strongly", [
    ((8, 5), "model.onnx", "fp32", ["FP16"], False),
    ((8, 6), "model.onnx", "fp32", ["FP16"], False),
    ((10, 3), "model.fp16.onnx", "fp16", [], True),
    ((10, 13), "model.fp16.onnx", "fp16", [], True),
    ((11, 4), "model.fp16.onnx", "fp16", [], True),
])
def test_fp16_path_per_version(version, onnx, kind, flags, strongly):
    choice = choose_build(models(), "model.onnx", "fp16", version)
    assert (choice.onnx, choice.request.onnx_kind, choice.plan.builder_flags, choice.plan.strongly_typed) == (
        onnx, kind, flags, strongly)


def test_fp16_without_an_fp16_onnx():
    assert choose_build(models(with_fp16=False), "model.onnx", "fp16", (10, 3)).plan.builder_flags == ["FP16"]
    with pytest.raises(PlanError, match="TensorRT 11.4 builds FP16 only from an FP16 ONNX"):
        choose_build(models(with_fp16=False), "model.onnx", "fp16", (11, 4))


def test_int8_prefers_qdq_and_falls_back_to_device_calibration():
    assert choose_build(models(), "model.onnx", "int8", (8, 5)).plan.builder_flags == ["INT8", "FP16"]
    assert choose_build(models(), "model.onnx", "int8", (10, 3)).plan.strongly_typed
    only_10 = models(int8_versions=["10.3", "10.x", "11"])
    legacy = choose_build(only_10, "model.onnx", "int8", (8, 5))
    assert legacy.calibrates and legacy.onnx == "model.onnx" and "8.5 pre-flight" in " ".join(legacy.notes)
    with pytest.raises(PlanError, match="no calibration images"):
        choose_build(only_10, "model.onnx", "int8", (8, 6), can_calibrate=False)
    with pytest.raises(PlanError, match="INT8 only from a Q/DQ ONNX"):
        choose_build(models(with_int8=False), "model.onnx", "int8", (11, 4))
    assert choose_build(models(), "model.onnx", "int8", (10, 3), legacy_int8=True).calibrates
    with pytest.raises(PlanError, match="removed INT8 calibrators"):
        choose_build(models(), "model.onnx", "int8", (11, 4), legacy_int8=True)


def test_a_variant_is_built_as_it_is():
    choice = choose_build(models(), "model.int8-trt.deepstream.onnx", "int8", (8, 5))
    assert choice.onnx == "model.int8-trt.deepstream.onnx" and choice.request.onnx_kind == "qdq"
    with pytest.raises(PlanError, match="Q/DQ ONNX builds an INT8 engine"):
        choose_build(models(), "model.int8-trt.onnx", "fp16", (10, 3))
    with pytest.raises(InputError, match="no entry"):
        choose_build(models(), "other.onnx", "fp16", (10, 3))


def test_lint_profiles():
    assert [lint_profile(v) for v in [(8, 5), (8, 6), (10, 3), (10, 13), (11, 4)]] == ["8.5", "8.6", "10.3", "10.x", "11"]


def test_postprocess_logits_and_class_ids():
    logits = np.zeros((1, 3, 4, 6), np.float32)
    logits[0, 2, :, 3:] = 1.0
    logits[0, 1, :2, :3] = 1.0
    mask = postprocess(logits, (12, 8))  # (width, height)
    assert mask.shape == (8, 12) and mask.dtype == np.uint8
    assert (mask[:, 6:] == 2).all() and (mask[:4, :6] == 1).all() and (mask[4:, :6] == 0).all()
    ids = class_map(logits)
    assert np.array_equal(postprocess(ids.astype(np.int32)[None, None], (6, 4), 3), ids)
    assert postprocess(ids.astype(np.int32), (6, 4), 300).dtype == np.int32
    with pytest.raises(InputError, match="C x H x W"):
        postprocess(np.zeros((2, 3, 4, 4), np.float32), (4, 4))


def test_colorize_and_overlay_keep_the_background():
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    assert colorize(mask, palette)[1, 0].tolist() == [0, 0, 255]
    image = np.full((2, 2, 3), 100, np.uint8)
    blended = np.asarray(overlay(image, mask, palette, alpha=0.5))
    assert blended[0, 0].tolist() == [100, 100, 100]  # background keeps the image
    assert blended[0, 1].tolist() == [178, 50, 50]
    big = overlay(Image.new("RGB", (8, 4), (10, 20, 30)), mask, palette)
    assert big.size == (8, 4)  # a mask of another size is resized with nearest neighbour
    with pytest.raises(InputError, match="alpha"):
        overlay(image, mask, palette, alpha=2)


def test_segment_images_writes_overlays_and_palette_masks(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, size in enumerate([(20, 10), (7, 9), (16, 16)]):
        Image.new("RGB", size, (i * 40, 80, 120)).save(src / f"img{i}.png")
    (src / "notes.txt").write_text("not an image")
    kind, files = find_inputs(src)
    calls = []

    def fake_predict(images):
        calls.append(len(images))
        return [np.full((im.height, im.width), 1 + i % 2, np.uint8) for i, im in enumerate(images)]

    summary = segment_images(fake_predict, files, tmp_path / "out", [[0, 0, 0], [0, 255, 0], [0, 0, 255]], batch=2)
    assert kind == "images" and summary["count"] == 3 and calls == [2, 1]
    for path in files:
        overlay_image = Image.open(tmp_path / "out" / f"{path.stem}.overlay.png")
        mask = Image.open(tmp_path / "out" / f"{path.stem}.mask.png")
        assert overlay_image.size == Image.open(path).size and mask.mode == "P"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {1, 2}
        assert mask.getpalette()[3:6] == [0, 255, 0]


def test_inputs_that_are_not_images_or_videos(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="has no images"):
        find_inputs(tmp_path / "empty")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="neither an image"):
        find_inputs(tmp_path / "a.txt")
    with pytest.raises(InputError, match="input not found"):
        find_inputs(tmp_path / "missing.mp4")


def test_video_without_pyav_or_opencv_says_how_to_get_them(tmp_path, monkeypatch):
    import sys

    from aspp_deploy.runtime.video import open_source

    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    assert find_inputs(video) == ("stream", [str(video)])
    with pytest.raises(MissingDependencyError, match="pip install av"):
        open_source(str(video))
    with pytest.raises(MissingDependencyError, match="python3-opencv"):
        open_source("gst:videotestsrc ! appsink")
