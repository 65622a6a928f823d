"""Output semantics of `import`: NHWC or NCHW maps, one sigmoid/logit channel (binary), class ids with a
channel axis or at low resolution, uint8 inputs, ambiguous shapes refused with the flag named, parity
judged relative to the output's scale. Each model is a small ONNX graph built here, so the test states
exactly what the graph returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from aspp_deploy.cli import app

runner = CliRunner()
RNG = np.random.default_rng(0)


def _save(tmp: Path, name: str, nodes, inits, inp, out, opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, name, [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def conv_model(tmp: Path, name: str, *, channels: int, nhwc_in: bool, nhwc_out: bool, sigmoid: bool,
               size: int = 64, stride: int = 1, in_type=TensorProto.FLOAT, gain: float = 1.0) -> Path:
    """x -> (transpose) -> Conv(3 -> channels, stride) -> (sigmoid) -> (transpose)."""
    w = (RNG.standard_normal((channels, 3, 3, 3)) * gain).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(w, "w")]
    x = "x"
    if in_type == TensorProto.UINT8:
        nodes.append(helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        inits.append(numpy_helper.from_array(np.asarray(1 / 255, np.float32), "s"))
        nodes.append(helper.make_node("Mul", ["xf", "s"], ["xs"]))
        x = "xs"
    if nhwc_in:
        nodes.append(helper.make_node("Transpose", [x], ["xt"], perm=[0, 3, 1, 2]))
        x = "xt"
    nodes.append(helper.make_node("Conv", [x, "w"], ["c"], pads=[1, 1, 1, 1], strides=[stride, stride]))
    y = "c"
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [y], ["p"]))
        y = "p"
    if nhwc_out:
        nodes.append(helper.make_node("Transpose", [y], ["y"], perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", [y], ["y"]))
    in_shape = [1, size, size, 3] if nhwc_in else [1, 3, size, size]
    o = size // stride
    out_shape = [1, o, o, channels] if nhwc_out else [1, channels, o, o]
    return _save(tmp, name, nodes, inits, helper.make_tensor_value_info("x", in_type, in_shape),
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape))


def cli_import(path: Path, out: Path, *extra: str):
    return runner.invoke(app, ["import", str(path), "--out", str(out), "--json", str(out / "entry.json"), *extra])


def run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_nhwc_sigmoid_person_model_is_binary_not_256_classes(tmp_path):
    src = conv_model(tmp_path, "nhwc_sigmoid", channels=1, nhwc_in=True, nhwc_out=True, sigmoid=True)
    out = tmp_path / "art"
    res = cli_import(src, out)
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "entry.json").read_text())
    assert entry["classes"] == ["background", "foreground"]
    assert entry["spec"]["output_layout"] == "NHWC" and entry["spec"]["threshold"] == 0.5
    assert entry["spec"]["output"] == "probabilities"
    # the adopted graph returns [1, 2, 64, 64]; its argmax is the thresholded sigmoid of the original
    x = RNG.standard_normal((1, 64, 64, 3)).astype(np.float32)
    adopted = run(out / "model.onnx", x)
    assert adopted.shape == (1, 2, 64, 64)
    p = run(src, x)[..., 0]
    assert 0.05 < (p > 0.5).mean() < 0.95  # both classes present: the check below can fail
    assert np.array_equal(adopted.argmax(1), (p > 0.5).astype(np.int64))
    np.testing.assert_allclose(adopted[:, 0] + adopted[:, 1], 1.0, atol=1e-6)  # [1 - p, p]


def test_threshold_and_nchw_logit_channel(tmp_path):
    src = conv_model(tmp_path, "nchw_logit", channels=1, nhwc_in=False, nhwc_out=False, sigmoid=False)
    out = tmp_path / "art"
    res = cli_import(src, out, "--threshold", "0.8")
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "entry.json").read_text())
    assert entry["spec"]["output"] == "logits" and entry["spec"]["threshold"] == 0.8
    x = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)
    z = run(src, x)[:, 0]
    fg = 1 / (1 + np.exp(-z)) > 0.8
    assert 0.01 < fg.mean() < 0.99
    assert np.array_equal(run(out / "model.onnx", x).argmax(1), fg.astype(np.int64))


def test_one_channel_in_0_1_without_sigmoid_names_the_flag(tmp_path):
    # a Conv whose outputs happen to stay in 0..1: probability or logit cannot be told
    w = np.full((1, 3, 1, 1), 0.001, np.float32)
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Conv", ["a", "w"], ["y"])]
    src = _save(tmp_path, "ambiguous_kind", nodes, [numpy_helper.from_array(w, "w")],
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32]),
                helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32]))
    res = cli_import(src, tmp_path / "art")
    assert res.exit_code != 0
    assert "--output-kind" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "art" / "model.onnx").exists()
    ok = cli_import(src, tmp_path / "art", "--output-kind", "probabilities")
    assert ok.exit_code == 0, ok.output


def test_ambiguous_output_layout_stops_and_names_the_flag(tmp_path):
    # 32 x 32 input, [1, 32, 32, 32] output: 32 classes NCHW, or 32 classes NHWC
    src = conv_model(tmp_path, "square", channels=32, nhwc_in=False, nhwc_out=False, sigmoid=False, size=32)
    res = cli_import(src, tmp_path / "art")
    assert res.exit_code != 0 and "--output-layout" in res.output
    assert not (tmp_path / "art" / "model.onnx").exists()
    ok = cli_import(src, tmp_path / "art", "--output-layout", "NCHW")
    assert ok.exit_code == 0, ok.output
    assert len(json.loads((tmp_path / "art" / "entry.json").read_text())["classes"]) == 32


def test_nhwc_multiclass_output_transposed(tmp_path):
    src = conv_model(tmp_path, "nhwc5", channels=5, nhwc_in=False, nhwc_out=True, sigmoid=False, stride=2)
    out = tmp_path / "art"
    res = cli_import(src, out)
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "entry.json").read_text())
    assert len(entry["classes"]) == 5 and entry["spec"]["output_layout"] == "NHWC"
    assert run(out / "model.onnx", RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)).shape == (1, 5, 64, 64)


def test_low_resolution_class_ids_with_channel_axis(tmp_path):
    """argmax at 1/8 with a kept channel axis: squeezed, and upsampled so that pixel i takes cell i // 8
    (the graph and the parity reference agree; this import used to fail its own parity)."""
    w = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["x"], ["d"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Conv", ["d", "w"], ["c"]),
             helper.make_node("ArgMax", ["c"], ["y"], axis=1, keepdims=1)]
    src = _save(tmp_path, "lowres_ids", nodes, [numpy_helper.from_array(w, "w")],
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64]),
                helper.make_tensor_value_info("y", TensorProto.INT64, [1, 1, 8, 8]))
    out = tmp_path / "art"
    res = cli_import(src, out, "--classes", "a,b,c,d")
    assert res.exit_code == 0, res.output
    x = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)
    low = run(src, x)[0, 0]
    assert len(np.unique(low)) > 1
    up = run(out / "model.onnx", x)
    assert up.shape == (1, 64, 64)
    assert np.array_equal(up[0], np.repeat(np.repeat(low, 8, 0), 8, 1))


def test_uint8_input_model(tmp_path):
    src = conv_model(tmp_path, "u8", channels=3, nhwc_in=True, nhwc_out=False, sigmoid=False,
                     in_type=TensorProto.UINT8)
    out = tmp_path / "art"
    res = cli_import(src, out)
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "entry.json").read_text())
    pre = entry["preprocess"]
    assert pre["scale"] == 1.0 and pre["mean"] == [0.0, 0.0, 0.0] and pre["std"] == [1.0, 1.0, 1.0]
    x = RNG.integers(0, 256, (1, 64, 64, 3)).astype(np.uint8)
    np.testing.assert_allclose(run(out / "model.onnx", x.astype(np.float32)), run(src, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gain", [1e4, 1e-4])
def test_parity_is_relative_to_the_output_scale(tmp_path, gain):
    """Logits in the thousands pass (their float32 noise exceeds 1e-3 absolute); logits of 1e-4 are
    still judged (the report's relative figure is what the gate reads)."""
    src = conv_model(tmp_path, f"gain{gain:g}", channels=4, nhwc_in=False, nhwc_out=False, sigmoid=False, gain=gain)
    out = tmp_path / "art"
    res = cli_import(src, out)
    assert res.exit_code == 0, res.output
    parity = json.loads((out / "entry.json").read_text())["parity"]
    assert parity["ok"] and parity["max_rel"] <= parity["max_rel_tol"]
    assert parity["output_scale"] == pytest.approx(max(c["scale"] for c in parity["cases"]))
    assert (parity["output_scale"] > 100) == (gain > 1)


PERSON_NET = '''
import torch
from torch import nn

class Person(nn.Module):
    """One sigmoid channel, NHWC out (as a Keras/TFLite-born model returns it), stride 2."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.head = nn.Conv2d(4, 1, 1)
    def forward(self, x):
        return torch.sigmoid(self.head(torch.relu(self.conv(x)))).permute(0, 2, 3, 1)

def build():
    return Person()
'''


def test_pytorch_one_sigmoid_channel_nhwc_out(tmp_path):
    import torch

    (tmp_path / "person_net.py").write_text(PERSON_NET)
    torch.manual_seed(0)
    ns: dict = {}
    exec(PERSON_NET, ns)
    net = ns["build"]().eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "art"
    res = runner.invoke(app, ["export", "--arch", f"{tmp_path / 'person_net.py'}:build", "--weights",
                              str(tmp_path / "w.pt"), "--height", "64", "--width", "64", "--output-kind",
                              "probabilities", "--out", str(out), "--json", str(out / "entry.json")])
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "entry.json").read_text())
    assert entry["classes"] == ["background", "foreground"] and entry["outputs"][0]["shape"][1] == 2
    x = RNG.standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        p = torch.nn.functional.interpolate(net(torch.from_numpy(x)).permute(0, 3, 1, 2), size=(64, 64),
                                            mode="bilinear", align_corners=False)[:, 0].numpy()
    fg = p > 0.5
    assert 0.01 < fg.mean() < 0.99
    agree = (run(out / "model.onnx", x).argmax(1) == fg).mean()
    assert agree > 0.999
