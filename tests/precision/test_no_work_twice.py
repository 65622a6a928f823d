"""Quantizing the same FP32 ONNX with the same images and settings again gives the same bytes, and its
accuracy figures are reused rather than measured again."""

from __future__ import annotations

import json

import pytest

from aspp_deploy.io import sha256_file
from aspp_deploy.precision.modelopt_backend import modelopt_available
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

CASES = [("int8", "cpu", "ort"), ("fp16", "trt", "auto"),
         pytest.param("int8", "trt", "auto", marks=pytest.mark.skipif(not modelopt_available(),
                                                                       reason="ModelOpt is not installed"))]


@pytest.mark.parametrize("precision,target,backend", CASES)
def test_quantizing_again_gives_the_same_file_and_measures_nothing_again(
        fp32_model, calib_dir, tiny_data, precision, target, backend, monkeypatch):
    import aspp_deploy.precision.accuracy as A

    def run():
        opts = QuantizeOptions(precision, target, calib_dir, calib_size=4, data=tiny_data, budget_images=2,
                               eval_images=3, backend=backend)
        return quantized_onnx_from_fp32(fp32_model, opts)

    before = (fp32_model.stat().st_mtime_ns, sha256_file(fp32_model))
    first = run()
    # the source is read, never written: not its bytes and not its modification time (ModelOpt saved
    # the model it loaded back over the path it was given)
    assert (fp32_model.stat().st_mtime_ns, sha256_file(fp32_model)) == before
    sha = sha256_file(first.onnx_path)
    assert first.entry["onnx_sha256"] == sha

    def no_inference(*args, **kwargs):
        raise AssertionError("measured again although nothing changed")

    with monkeypatch.context() as m:  # the budget loop's and the validation's figures come from the cache
        m.setattr(A, "compare_on_val", no_inference)
        m.setattr(A.Reference, "compare", no_inference)
        m.setattr(A.Reference, "__init__", no_inference)
        again = run()
    assert sha256_file(again.onnx_path) == sha, "the same inputs gave another file"
    assert again.entry["accuracy"] == first.entry["accuracy"]
    # the measured and timed facts are in the sidecar, which says what this run did
    sidecar = json.loads((fp32_model.parent / "manifest.json").read_text())["artifacts"][first.onnx_path.name]
    assert sidecar["onnx_sha256"] == sha and "seconds" in sidecar and "accuracy" in sidecar


def test_a_changed_validation_image_is_measured_again(fp32_model, calib_dir, tiny_data, tmp_path, monkeypatch):
    import shutil

    from PIL import Image

    import aspp_deploy.precision.accuracy as A
    from aspp_deploy.data.voc import VOCSegmentation

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    measured = []
    real = A.compare_on_val
    monkeypatch.setattr(A, "compare_on_val", lambda *a, **k: measured.append(1) or real(*a, **k))

    def run():
        opts = QuantizeOptions("int8", "cpu", calib_dir, calib_size=4, data=data, budget_images=0, eval_images=2)
        return quantized_onnx_from_fp32(fp32_model, opts)

    first = run()
    run()
    assert len(measured) == 1  # unchanged: reused
    image = VOCSegmentation(data, "val").samples[1].image
    with Image.open(image) as im:
        Image.eval(im.convert("RGB"), lambda v: 255 - v).save(image)  # same name, other content
    second = run()
    assert len(measured) == 2  # changed: measured again, never the old figures
    assert sha256_file(second.onnx_path) == sha256_file(first.onnx_path)  # calibration images unchanged
    VOCSegmentation(data, "val").samples[2].image.write_bytes(image.read_bytes())  # an image past the 2 measured
    run()
    assert len(measured) == 2
