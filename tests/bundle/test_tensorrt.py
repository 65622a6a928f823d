"""The bundle on real TensorRT: build its engines with the runtime's own build command (the path chosen
for the installed version), then ``Segmenter`` against ONNX Runtime on the FP32 ONNX, and the example
app end to end. Skips, with the reason, without TensorRT and a CUDA device."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from aspp_deploy.backends.registry import trt_unavailable_reason

pytestmark = pytest.mark.tensorrt
ort = pytest.importorskip("onnxruntime")

MIN_AGREEMENT = {"fp16": 0.98, "int8": 0.9}  # pixels whose class matches FP32 ONNX Runtime


SKIP = trt_unavailable_reason()
requires_trt = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


@pytest.fixture(scope="module")
def device_bundle(made_bundle, tmp_path_factory):
    """A copy of the bundle in which ./build.sh's engine builds have run (as on the device)."""
    if SKIP is not None:
        pytest.skip(SKIP)
    copy = tmp_path_factory.mktemp("device") / "jetson"
    shutil.copytree(made_bundle.out, copy)
    for precision in ("fp16", "int8"):
        proc = subprocess.run([sys.executable, "-m", "aspp_deploy.runtime", "build", "--precision", precision,
                               "--calib", "calibration/images", "--out", f"engines/model.{precision}.engine"],
                              cwd=copy, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "trtexec equivalent: trtexec" in proc.stdout
    return copy


@requires_trt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_segmenter_matches_onnx_runtime(device_bundle, precision):
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.data.voc import load_image
    from aspp_deploy.runtime import Segmenter, postprocess

    engine = device_bundle / "engines" / f"model.{precision}.engine"
    manifest = json.loads((device_bundle / "engines" / f"model.{precision}.engine.json").read_text())
    plan = json.loads(subprocess.run([sys.executable, "-m", "aspp_deploy.runtime", "plan", "--precision", precision,
                                      "--json"], cwd=device_bundle, capture_output=True, text=True).stdout)
    assert manifest["source_onnx"]["path"].endswith(plan["onnx"])  # built from the ONNX the plan chose
    entry = json.loads((device_bundle / "models" / "manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = Preprocess.from_dict(entry["preprocess"])
    session = ort.InferenceSession(str(device_bundle / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = sorted((device_bundle / "calibration" / "images").glob("*.jpg"))
    with Segmenter(engine) as seg:
        assert seg.classes == entry["classes"] and seg.preprocess == pre
        masks = seg.predict_batch(images)
        single = seg.predict(images[0])
    assert np.array_equal(single, masks[0])
    agree = []
    for path, mask in zip(images, masks):
        image = load_image(path)
        reference = postprocess(session.run(None, {"input": pre(image)[None]})[0], image.size)
        assert mask.shape == reference.shape == (image.height, image.width) and mask.dtype == np.uint8
        agree.append((mask == reference).mean())
    assert np.mean(agree) >= MIN_AGREEMENT[precision], agree


@requires_trt
def test_segment_app_writes_overlays(device_bundle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aspp_deploy.runtime", "segment", "--engine",
                           "engines/model.fp16.engine", "--input", "selftest", "--out", str(tmp_path)],
                          cwd=device_bundle, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    inputs = [p for p in (device_bundle / "selftest").iterdir() if p.suffix in (".jpg", ".png")]
    assert len(list(tmp_path.glob("*.overlay.png"))) == len(inputs) == len(list(tmp_path.glob("*.mask.png")))
