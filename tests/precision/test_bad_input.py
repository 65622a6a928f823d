"""Bad input: one clear line, exit code 1, and no file left behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
from tests.precision.conftest import folder_listing

runner = CliRunner()


def _quantize(model, *args):
    return runner.invoke(app, ["quantize", "--onnx", str(model), *args])


def _fails_cleanly(result, fragment: str, folder, before) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output
    assert folder_listing(folder) == before, "files were left behind"


@pytest.mark.parametrize("case, fragment", [
    ("empty", "has no images (nothing)"),
    ("text-only", "none of them an image"),
    ("broken-jpg", "cannot read image"),
    ("missing", "calibration folder not found"),
    ("too-small", "is 5x40, too small for a 64x64 model"),
])
def test_bad_calibration_folder(tmp_path, fp32_model, tiny_data, case, fragment):
    calib = tmp_path / case
    if case != "missing":
        calib.mkdir()
    if case == "text-only":
        (calib / "notes.txt").write_text("not an image")
        (calib / "labels.csv").write_text("a,b\n")
    if case == "too-small":
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(calib / "a_fine.png")
        Image.fromarray(np.zeros((40, 5, 3), np.uint8)).save(calib / "b_thin.png")
    if case == "broken-jpg":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(calib / "good.jpg")
        (calib / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    before = folder_listing(fp32_model.parent)
    r = _quantize(fp32_model, "--precision", "int8", "--target", "cpu", "--calib", str(calib),
                  "--data", str(tiny_data))
    _fails_cleanly(r, fragment, fp32_model.parent, before)


@pytest.mark.parametrize("how", ["same name", "same contents"])
def test_calibration_folder_sharing_files_with_val_is_refused(tmp_path, fp32_model, calib_dir, tiny_data, how):
    calib = tmp_path / "calib"
    shutil.copytree(calib_dir, calib)
    val_image = sorted((tiny_data / "JPEGImages").glob("val_*"))[0]
    target = calib / (val_image.name if how == "same name" else "innocent_name.jpg")
    if how == "same name":
        Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(target)  # other pixels, same name
    else:
        shutil.copy(val_image, target)
    before = folder_listing(fp32_model.parent)
    r = _quantize(fp32_model, "--precision", "int8", "--calib", str(calib), "--data", str(tiny_data))
    _fails_cleanly(r, "calibrate on images you do not evaluate on", fp32_model.parent, before)


def test_fp16_of_an_int8_model_is_refused(fp32_model, calib_dir, tiny_data):
    r = _quantize(fp32_model, "--precision", "int8", "--target", "cpu", "--calib", str(calib_dir),
                  "--data", str(tiny_data), "--budget-images", "0", "--eval-images", "1")
    assert r.exit_code == 0, r.output
    int8 = fp32_model.with_name("model.int8-cpu.onnx")
    before = folder_listing(fp32_model.parent)
    for precision in ("fp16", "int8"):
        r = _quantize(int8, "--precision", precision, "--calib", str(calib_dir), "--data", str(tiny_data))
        _fails_cleanly(r, "is already quantized", fp32_model.parent, before)


def test_unreadable_or_unmanifested_model_is_refused(tmp_path, tiny_data):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    r = _quantize(bad, "--precision", "fp16", "--data", str(tiny_data))
    _fails_cleanly(r, "is not a readable ONNX file", tmp_path, folder_listing(tmp_path))
    r = _quantize(tmp_path / "absent.onnx", "--precision", "fp16")
    _fails_cleanly(r, "ONNX model not found", tmp_path, folder_listing(tmp_path))


@pytest.mark.parametrize("args, fragment", [
    (["--calib-size", "-1"], "--calib-size -1 is impossible"),
    (["--max-miou-drop", "-0.1"], "--max-miou-drop -0.1 is impossible"),
    (["--target", "cpu", "--backend", "modelopt"], "drop --backend modelopt"),
    (["--out", "x.txt"], "must end in .onnx"),
])
def test_bad_options(fp32_model, calib_dir, tiny_data, args, fragment):
    before = folder_listing(fp32_model.parent)
    r = _quantize(fp32_model, "--precision", "int8", "--calib", str(calib_dir), "--data", str(tiny_data), *args)
    _fails_cleanly(r, fragment, fp32_model.parent, before)


def test_a_failure_after_calibration_leaves_no_output(fp32_model, calib_dir, tiny_data, monkeypatch):
    import aspp_deploy.precision.quantize as Q

    def broken(*a, **k):
        raise RuntimeError("simulated crash while measuring accuracy")

    monkeypatch.setattr("aspp_deploy.precision.accuracy.compare_on_val", broken)
    with pytest.raises(RuntimeError):
        quantized_onnx_from_fp32(fp32_model, Q.QuantizeOptions("int8", "cpu", calib_dir, data=tiny_data,
                                                               budget_images=0, use_cache=False))
    assert not fp32_model.with_name("model.int8-cpu.onnx").exists()
    assert not any(p.suffix == ".tmp" or p.name.startswith(".model") for p in fp32_model.parent.iterdir())
    assert QuantizeOptions  # the public names stay importable
