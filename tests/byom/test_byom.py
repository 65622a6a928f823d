"""Bring your own model: factory + weights from a local file, TorchScript, torch.export, a foreign
ONNX (NHWC, BGR, low-resolution logits), each through export/import -> parity -> INT8 CPU -> compare;
and the bad inputs each source can bring. Random weights, small inputs, nothing downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from aspp_deploy.cli import app
from tests.byom.conftest import MODELS_FILE, USER_CLASSES

runner = CliRunner()
SIZE = ["--height", "64", "--width", "96"]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def tiny_models():
    sys.path.insert(0, str(MODELS_FILE.parent))
    try:
        import tiny_models  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return tiny_models


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = tiny_models().build(3)
    path = tmp_path_factory.mktemp("w") / "weights.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, path)  # nested, as training loops save
    return path


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def compare_ok(tmp_path: Path, art: Path, user_voc: Path, user_calib: Path, *model_args: str) -> dict:
    out = tmp_path / "compare.json"
    r = cli("compare", *model_args, "--artifacts", art, "--data", user_voc, "--calib", user_calib,
            "--limit", "2", "--iters", "1", "--warmup", "0", "--report", tmp_path / "report", "--json", out)
    assert r.exit_code == 0, r.output
    return {(x["backend"], x["precision"], x["device"]): x for x in json.loads(out.read_text())["rows"]}


def quantize_cpu(onnx_path: Path, user_voc: Path, user_calib: Path) -> dict:
    r = cli("quantize", "--onnx", onnx_path, "--precision", "int8", "--target", "cpu", "--data", user_voc,
            "--calib", user_calib, "--budget-images", "0")
    assert r.exit_code == 0, r.output
    entry = json.loads((onnx_path.parent / "manifest.json").read_text())["artifacts"]["model.int8-cpu.onnx"]
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path.with_name("model.int8-cpu.onnx"))).graph.node)
    return entry


def test_factory_from_local_file_end_to_end(weights, user_voc, user_calib, tmp_path):
    art = tmp_path / "art"
    model = ["--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 3}', "--weights", weights]
    r = cli("export", *model, *SIZE, "--classes", ",".join(USER_CLASSES), "--out", art)
    assert r.exit_code == 0, r.output
    entry = json.loads((art / "manifest.json").read_text())["artifacts"]["model.onnx"]
    # the dict output's 'out' was used, aux dropped, 1/8 resolution upsampled in the graph
    notes = " ".join(entry["model"]["output_adaptations"])
    assert "'out' used" in notes and "aux dropped" in notes and "upsampled" in notes
    assert entry["outputs"][0]["shape"] == [1, 3, 64, 96] and entry["classes"] == USER_CLASSES
    assert entry["parity"]["ok"] and entry["parity"]["max_abs"] < 1e-4
    assert entry["source"]["kind"] == "factory" and entry["source"]["arch_args"] == {"num_classes": 3}
    # ASPP found by structure in a model whose module names are not ours
    assert [a["rates"] for a in entry["export"]["aspp"]] == [[2, 3]]
    assert "assumed" in r.output and "channel order RGB" in r.output  # the defaults it assumed are said
    # independent parity: the file against the PyTorch model on an input the export never saw
    net = tiny_models().build(3).eval()
    net.load_state_dict(torch.load(weights)["state_dict"])
    x = np.random.default_rng(5).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(net(torch.from_numpy(x))["out"], size=(64, 96), mode="bilinear",
                                              align_corners=False).numpy()
    assert np.abs(run_onnx(art / "model.onnx", x) - ref).max() < 1e-4
    q = quantize_cpu(art / "model.onnx", user_voc, user_calib)
    assert q["classes"] == USER_CLASSES and q["accuracy"]["num_images"] == 4
    rows = compare_ok(tmp_path, art, user_voc, user_calib, *model, *SIZE, "--classes", ",".join(USER_CLASSES))
    for key in [("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu"), ("onnxruntime", "int8 (cpu QDQ)", "cpu")]:
        assert rows[key]["status"] == "ok", rows[key]
    assert rows[("onnxruntime", "fp32", "cpu")]["pixel_agreement"] > 0.999
    assert "exporting again" not in r.output  # nothing to redo on the second run below
    again = cli("compare", *model, *SIZE, "--classes", ",".join(USER_CLASSES), "--artifacts", art, "--data", user_voc,
                "--calib", user_calib, "--limit", "1", "--iters", "1", "--warmup", "0", "--report", tmp_path / "r2")
    assert again.exit_code == 0 and "exporting again" not in again.output, again.output


def test_torchscript_and_torch_export_sources(weights, user_voc, user_calib, tmp_path):
    mods = tiny_models()
    net = mods.build(3).eval()
    net.load_state_dict(torch.load(weights)["state_dict"])
    wrapped = mods.TensorOut(net).eval()
    x = torch.zeros(1, 3, 64, 96)
    ts = tmp_path / "model.ts"
    torch.jit.trace(wrapped, x).save(str(ts))
    pt2 = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(wrapped, (x,)), str(pt2))
    for path, kind in ((ts, "torchscript"), (pt2, "torch.export")):
        out = tmp_path / kind
        r = cli("export", "--checkpoint", path, "--trust-code", *SIZE, "--out", out)  # code: named as such
        assert r.exit_code == 0, r.output
        entry = json.loads((out / "manifest.json").read_text())["artifacts"]["model.onnx"]
        assert entry["source"]["kind"] == kind and entry["parity"]["ok"]
        y = run_onnx(out / "model.onnx", np.ones((1, 3, 64, 96), np.float32))
        with torch.no_grad():
            ref = torch.nn.functional.interpolate(wrapped(torch.ones(1, 3, 64, 96)), size=(64, 96),
                                                  mode="bilinear", align_corners=False).numpy()
        assert np.abs(y - ref).max() < 1e-4
        quantize_cpu(out / "model.onnx", user_voc, user_calib)
        if kind == "torch.export":
            continue  # compare loads both kinds through the same source loader export used; once is enough
        rows = compare_ok(tmp_path / f"c-{kind}", out, user_voc, user_calib, "--checkpoint", path, "--trust-code",
                          *SIZE)
        for key in [("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu"), ("onnxruntime", "int8 (cpu QDQ)", "cpu")]:
            assert rows[key]["status"] == "ok", rows[key]


@pytest.fixture(scope="module")
def foreign_onnx(weights, tmp_path_factory) -> Path:
    """An ONNX made elsewhere: NHWC input named 'image', dynamic batch, logits at 1/8 resolution."""
    mods = tiny_models()
    net = mods.build(3).eval()
    net.load_state_dict(torch.load(weights)["state_dict"])
    path = tmp_path_factory.mktemp("foreign") / "segmenter.onnx"
    torch.onnx.export(mods.NHWCLowRes(net).eval(), (torch.zeros(1, 64, 96, 3),), str(path), opset_version=13,
                      dynamo=False, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}})
    return path


def test_foreign_onnx_nhwc_bgr_low_res(foreign_onnx, user_voc, user_calib, tmp_path):
    art = tmp_path / "art"
    r = cli("import", foreign_onnx, "--channel-order", "BGR", "--classes", ",".join(USER_CLASSES), "--out", art)
    assert r.exit_code == 0, r.output
    entry = json.loads((art / "manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = entry["preprocess"]
    assert (pre["layout"], pre["channel_order"], pre["height"], pre["width"]) == ("NHWC", "BGR", 64, 96)
    assert entry["inputs"][0]["name"] == "image" and entry["outputs"][0]["shape"] == ["n", 3, 64, 96]
    assert "upsampled" in " ".join(entry["model"]["output_adaptations"])
    assert entry["parity"]["ok"] and len(entry["parity"]["cases"]) >= 3
    assert [a["rates"] for a in entry["export"]["aspp"]] == [[2, 3]]
    # the adopted file = the original, upsampled bilinearly (align_corners=False), at batch 2
    x = np.random.default_rng(3).standard_normal((2, 64, 96, 3)).astype(np.float32)
    low = torch.from_numpy(run_onnx(foreign_onnx, x))
    ref = torch.nn.functional.interpolate(low, size=(64, 96), mode="bilinear", align_corners=False).numpy()
    assert np.abs(run_onnx(art / "model.onnx", x) - ref).max() < 1e-4
    quantize_cpu(art / "model.onnx", user_voc, user_calib)
    rows = compare_ok(tmp_path, art, user_voc, user_calib, "--onnx", foreign_onnx, "--channel-order", "BGR",
                      "--classes", ",".join(USER_CLASSES))
    assert rows[("torch", "fp32", "cpu")]["status"] == "unavailable"
    assert "came as ONNX" in rows[("torch", "fp32", "cpu")]["reason"]
    assert rows[("onnxruntime", "fp32", "cpu")]["status"] == "ok"
    assert rows[("onnxruntime", "int8 (cpu QDQ)", "cpu")]["status"] == "ok"


def test_eval_maps_masks_back_through_the_spec_geometry(weights, user_voc, tmp_path):
    """eval of the PyTorch model and of its letterboxed export agree, at the masks' own sizes."""
    model = ["--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 3}', "--weights", weights]
    art = tmp_path / "art"
    assert cli("export", *model, *SIZE, "--resize", "letterbox", "--out", art).exit_code == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text("input:\n  height: 64\n  width: 96\n  resize: letterbox\n")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    r1 = cli("eval", *model, "--spec", spec, "--data", user_voc, "--json", a)
    r2 = cli("eval", "--backend", "onnxruntime", "--model", art / "model.onnx", "--data", user_voc, "--json", b)
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["confusion"] == jb["confusion"] and ja["num_images"] == 4


@pytest.mark.parametrize("case", ["no-module", "no-function", "raises", "bad-weights", "no-weights",
                                  "pretrained", "classifier", "spec-classes", "spec-layout", "bad-json",
                                  "escape-name"])
def test_bad_models_one_line_nothing_written(case, weights, foreign_onnx, tmp_path):
    out = tmp_path / "out"
    args = {
        "no-module": (["export", "--arch", "no_such_pkg.models:build", "--weights", weights], "cannot import no_such_pkg"),
        "no-function": (["export", "--arch", f"{MODELS_FILE}:nope", "--weights", weights], "has no callable 'nope'"),
        "raises": (["export", "--arch", f"{MODELS_FILE}:broken", "--weights", weights], "this factory always fails"),
        "bad-weights": (["export", "--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 5}',
                         "--weights", weights], "head.weight has shape (3, 8, 1, 1), the model wants (5, 8, 1, 1)"),
        "no-weights": (["export", "--arch", f"{MODELS_FILE}:build"], "--arch needs --weights"),
        "pretrained": (["export", "--arch", f"{MODELS_FILE}:build", "--arch-args", '{"pretrained": true}',
                        "--weights", weights], "nothing is ever downloaded"),
        "classifier": (["export", "--arch", f"{MODELS_FILE}:classifier", "--weights", "CLASSIFIER"],
                       "not a segmentation map"),
        "spec-classes": (["import", foreign_onnx, "--classes", "a,b"], "a class count of 2 given, the model has 3"),
        "spec-layout": (["import", foreign_onnx, "--layout", "NCHW"], "layout NCHW given"),
        "bad-json": (["export", "--arch", f"{MODELS_FILE}:build", "--arch-args", "{num_classes: 3}",
                      "--weights", weights], "--arch-args is not valid JSON"),
        "escape-name": (["export", "--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 3}',
                         "--weights", weights, "--name", "../escaped"], "must be a plain file name"),
    }[case]
    argv, message = args
    if "CLASSIFIER" in argv:
        path = tmp_path / "cls.pt"
        torch.save(tiny_models().classifier(4).state_dict(), path)
        argv = [path if a == "CLASSIFIER" else a for a in argv]
    r = cli(*argv, *SIZE, "--out", out)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "escaped.onnx").exists()


def test_weights_file_is_never_unpickled_with_code(tmp_path):
    """A weights file that would run code when unpickled is refused, and the code never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    r = cli("export", "--arch", f"{MODELS_FILE}:build", "--weights", path, *SIZE, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "cannot read weights" in r.output
    assert not marker.exists()


def test_compare_never_replaces_an_adopted_model_with_the_shipped_one(foreign_onnx, tmp_path):
    """compare with no model option works on what ARTIFACTS holds; a spec that does not match it is
    refused instead of re-exporting the shipped checkpoint over the user's model."""
    from aspp_deploy.io import sha256_file

    art = tmp_path / "art"
    assert cli("import", foreign_onnx, "--out", art).exit_code == 0
    before = sha256_file(art / "model.onnx")
    r = cli("compare", "--artifacts", art, "--classes", "a,b,c,d", "--limit", "1", "--iters", "1",
            "--report", tmp_path / "rep")
    assert r.exit_code == 1 and "made with another spec" in r.output, r.output
    assert sha256_file(art / "model.onnx") == before
