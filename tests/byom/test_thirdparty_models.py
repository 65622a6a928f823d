"""torchvision and segmentation_models_pytorch models through the presets: export -> parity with the
PyTorch model -> INT8 CPU quantize -> compare rows that are ok; ASPP found by structure in the DeepLab
ones and nowhere else. Random weights saved to a file (nothing is downloaded), small inputs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from aspp_deploy.cli import app
from tests.byom.conftest import USER_CLASSES
from tests.thirdparty import import_smp, import_torchvision

runner = CliRunner()
H, W = 64, 96


def build(kind: str):
    """(preset, arch-args, model) with random weights; construction never downloads."""
    torch.manual_seed(0)
    if kind.startswith("tv."):
        seg = import_torchvision().models.segmentation
        name = kind[3:]
        extra = {"aux_loss": True} if name.startswith("deeplabv3") else {}
        return name, None, getattr(seg, name)(weights=None, weights_backbone=None, num_classes=3, **extra)
    smp = import_smp()
    name = kind[4:]
    args = {"encoder_name": "resnet18", "classes": 3}
    return f"smp.{name}", args, getattr(smp, name)(encoder_weights=None, **args)


@pytest.mark.parametrize("kind, aspp_rates, with_compare", [
    ("tv.deeplabv3_mobilenet_v3_large", [12, 24, 36], False),
    ("tv.lraspp_mobilenet_v3_large", None, True),
    ("smp.DeepLabV3Plus", [12, 24, 36], False),
    ("smp.Unet", None, False),
])
def test_preset_model_end_to_end(kind, aspp_rates, with_compare, user_voc, user_calib, tmp_path):
    """Every preset through export, parity and INT8; one of them through compare as well (its PyTorch rows
    load the model through the same preset loader export uses, and each compare also makes the ModelOpt
    variants)."""
    preset, args, model = build(kind)
    model = model.eval()
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)  # torchvision's includes aux_classifier.*: dropped on load
    art = tmp_path / "art"
    source = ["--arch", preset, "--weights", str(weights)] + (["--arch-args", json.dumps(args)] if args else [])
    spec = ["--height", str(H), "--width", str(W), "--classes", ",".join(USER_CLASSES)]
    r = runner.invoke(app, ["export", *source, *spec, "--out", str(art)])
    assert r.exit_code == 0, r.output
    entry = json.loads((art / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["parity"]["ok"], entry["parity"]
    assert entry["outputs"][0]["shape"] == [1, 3, H, W]
    found = [a["rates"] for a in entry["export"]["aspp"]]
    if aspp_rates:
        assert len(found) == 1 and sorted(found[0]) == aspp_rates, found
        assert f"r{aspp_rates[0]}" in r.output
    else:
        assert found == [] and "ASPP found: none" in r.output
    # independent parity on an input the export never saw
    x = np.random.default_rng(11).standard_normal((1, 3, H, W)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    ref = (ref["out"] if isinstance(ref, dict) else ref).numpy()
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"input": x})[0] - ref).max() < 1e-3
    # INT8 for the CPU, then compare on the user's own classes
    q = runner.invoke(app, ["quantize", "--onnx", str(art / "model.onnx"), "--precision", "int8", "--target", "cpu",
                            "--data", str(user_voc), "--calib", str(user_calib), "--budget-images", "0"])
    assert q.exit_code == 0, q.output
    if not with_compare:
        return
    out = tmp_path / "c.json"
    c = runner.invoke(app, ["compare", *source, *spec, "--artifacts", str(art), "--data", str(user_voc),
                            "--calib", str(user_calib), "--limit", "2", "--iters", "1", "--warmup", "0",
                            "--report", str(tmp_path / "rep"), "--json", str(out)])
    assert c.exit_code == 0, c.output
    assert "exporting again" not in c.output  # the export above is reused
    rows = {(x["backend"], x["precision"], x["device"]): x for x in json.loads(out.read_text())["rows"]}
    for key in [("torch", "fp32", "cpu"), ("onnxruntime", "fp32", "cpu"), ("onnxruntime", "int8 (cpu QDQ)", "cpu")]:
        assert rows[key]["status"] == "ok", rows[key]
    assert rows[("onnxruntime", "fp32", "cpu")]["pixel_agreement"] > 0.999
