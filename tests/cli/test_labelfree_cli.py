"""eval and compare on a folder of photos without masks, end to end: accuracy is agreement with the
FP32 model, every summary says so, and a model other than the shipped one never falls back to the
synthetic split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app
from tests.precision.labelfree_helpers import (CLASSES, MODELS_FILE, SIZE, balance_foreground, binary_weights,
                                               perturbed, photos, shipped_photos)

runner = CliRunner()
KIND = "agreement with FP32 (no labels)"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A binary FP32 model exported with `--arch`, its INT8 (cpu) made from it, photos, calibration."""
    root = tmp_path_factory.mktemp("labelfree_cli")
    weights = binary_weights(root / "weights.pt")
    model = ["--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 2}', "--weights", weights,
             *SIZE, "--classes", CLASSES]
    r = cli("export", *model, "--out", root / "art")
    assert r.exit_code == 0, r.output
    fp32 = root / "art" / "model.onnx"
    hopper = photos(root / "hopper", 8)
    balance_foreground(fp32, sorted(hopper.iterdir()))
    calib = shipped_photos(root / "calib", 8)
    help_text = runner.invoke(app, ["quantize", "--help"], env={"COLUMNS": "300"}).output
    slower = ["--allow-slower"] if "--allow-slower" in help_text else []
    r = cli("quantize", "--onnx", fp32, "--precision", "int8", "--target", "cpu", "--calib", calib, "--data", hopper,
            "--budget-images", "0", *slower)
    assert r.exit_code == 0, r.output
    return {"fp32": fp32, "int8": fp32.with_name("model.int8-cpu.onnx"), "hopper": hopper, "calib": calib,
            "model": model, "root": root}


@pytest.fixture
def no_synthetic(monkeypatch):
    import aspp_deploy.eval.evaluate as E

    def refuse(*a, **k):
        raise AssertionError("the synthetic split must not be used for this model")

    monkeypatch.setattr(E, "ensure_default_data", refuse)


def test_eval_reduced_precision_model_on_images_agrees_with_its_fp32_source(setup, tmp_path, no_synthetic):
    out = tmp_path / "e.json"
    r = cli("eval", "--backend", "onnxruntime", "--model", setup["int8"], "--data", setup["hopper"], "--json", out)
    assert r.exit_code == 0, r.output
    assert KIND in r.output and "foreground IoU" in r.output
    res = json.loads(out.read_text())
    assert res["labels"] == "fp32" and res["accuracy_kind"] == KIND and res["reference"] == str(setup["fp32"])
    assert res["num_images"] == 8 and res["metric"] == "foreground IoU"
    assert 0.0 <= res["worst_image"] <= res["foreground_iou"] <= 1.0 and res["pixel_accuracy"] <= 1.0


def test_eval_fp32_model_on_images(setup, tmp_path, no_synthetic):
    fp32, hopper = setup["fp32"], setup["hopper"]
    r = cli("eval", "--backend", "onnxruntime", "--model", fp32, "--data", hopper)
    assert r.exit_code == 1 and "--reference" in r.output and "labels" in r.output, r.output
    out = tmp_path / "e.json"
    r = cli("eval", "--backend", "onnxruntime", "--model", fp32, "--data", hopper, "--reference", fp32, "--json", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["miou"] == res["pixel_accuracy"] == res["foreground_iou"] == res["worst_image"] == 1.0
    # a perturbed FP32 candidate against the same reference agrees less
    cand = perturbed(fp32, tmp_path / "cand.onnx", scale=0.1)
    shutil.copy(fp32.with_name("manifest.json"), tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["artifacts"]["cand.onnx"] = {**manifest["artifacts"]["model.onnx"], "file": "cand.onnx"}
    manifest["artifacts"]["cand.onnx"].pop("onnx_sha256", None)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    r = cli("eval", "--backend", "onnxruntime", "--model", cand, "--data", hopper, "--reference", fp32, "--json", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["miou"] < 1.0


def test_eval_without_data_names_data_for_a_model_that_is_not_the_shipped_one(setup, no_synthetic):
    r = cli("eval", "--backend", "onnxruntime", "--model", setup["int8"])
    assert r.exit_code == 1 and "--data" in r.output and "Traceback" not in r.output, r.output
    r = cli("eval", *setup["model"])
    assert r.exit_code == 1 and "--data" in r.output, r.output


def test_eval_refuses_a_reference_that_is_not_the_source(setup, tmp_path):
    folder = tmp_path / "art"
    shutil.copytree(setup["fp32"].parent, folder)
    perturbed(setup["fp32"], folder / "model.onnx", scale=0.1)  # same name, other bytes
    r = cli("eval", "--backend", "onnxruntime", "--model", folder / "model.int8-cpu.onnx", "--data", setup["hopper"])
    assert r.exit_code == 1 and "not the FP32 model" in r.output, r.output


def test_compare_on_an_image_folder(setup, tmp_path, no_synthetic):
    report, out = tmp_path / "rep", tmp_path / "c.json"
    r = cli("compare", *setup["model"], "--artifacts", tmp_path / "a", "--data", setup["hopper"],
            "--calib", setup["calib"], "--limit", "4", "--iters", "1", "--warmup", "0", "--report", report,
            "--json", out)
    assert r.exit_code == 0, r.output
    assert KIND in r.output
    result = json.loads(out.read_text())
    assert result["settings"]["labels"] == "fp32" and KIND in result["settings"]["accuracy"]
    rows = [x for x in result["rows"] if x["status"] == "ok"]
    by = {(x["backend"], x["precision"], x["device"]): x for x in rows}
    ref, ort_fp32 = by[("torch", "fp32", "cpu")], by[("onnxruntime", "fp32", "cpu")]
    assert ref["miou"] == ref["foreground_iou"] == 1.0  # the reference against its own masks
    assert ort_fp32["pixel_agreement"] > 0.999 and ort_fp32["foreground_iou"] > 0.99
    for x in rows:
        assert x["labels"] == "fp32" and x["foreground_iou"] is not None and x["worst_image_name"]
    summary = (report / "summary.md").read_text()
    assert KIND in summary and "fg IoU" in summary and "mIoU vs FP32" in summary
    html = (report / "report.html").read_text()
    assert KIND in html and "fg IoU" in html
    assert len(list((report / "overlays").iterdir())) == 3
    # the same command without --data refuses instead of measuring on the synthetic split
    r = cli("compare", *setup["model"], "--artifacts", tmp_path / "a", "--limit", "1", "--iters", "1",
            "--report", tmp_path / "r2")
    assert r.exit_code == 1 and "--data" in r.output, r.output
