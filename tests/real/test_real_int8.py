"""INT8 on a real network: MediaPipe's person segmenter, calibrated on real photos of people and
measured on other photos, held out, against its own FP32 masks (there are no labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app

runner = CliRunner()
CALIB = 12  # the first 12 of the 24 people photos calibrate; the other 12 are held out


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    from aspp_deploy.data.photos import write_photos

    folder = tmp_path_factory.mktemp("people")
    write_photos(folder, max_side=384, people_only=True)
    return folder


@pytest.fixture(scope="module")
def selfie(real_tflite, people, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("selfie")
    r = runner.invoke(app, ["import", str(real_tflite("selfie")), "--out", str(out), "--data", str(people),
                            "--mean", "0,0,0", "--std", "1,1,1"])
    assert r.exit_code == 0, r.output
    return out / "model.onnx"


def _inputs(model: Path, photos: list[Path]) -> list[np.ndarray]:
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.data.voc import load_image

    entry = json.loads((model.parent / "manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = Preprocess.from_dict(entry["preprocess"])
    return [pre(load_image(p))[None] for p in photos]


def _masks(model: Path | bytes, xs: list[np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return [s.run(None, {name: x})[0].argmax(1)[0] for x in xs]


def _fg_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a == 1, b == 1).sum()
    return 1.0 if union == 0 else float(np.logical_and(a == 1, b == 1).sum() / union)


def _builder(selfie: Path, people: Path, work: Path):
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.precision.cache import CacheKey, CacheLookup
    from aspp_deploy.runtime.calibration import CalibrationData
    from aspp_deploy.precision.int8_ort import CPU_RECIPE, OrtInt8Builder

    entry = json.loads((selfie.parent / "manifest.json").read_text())["artifacts"]["model.onnx"]
    files = sorted(people.glob("*.png"))[:CALIB]
    graph = onnx.load(str(selfie))
    calib = CalibrationData(files, Preprocess.from_dict(entry["preprocess"]), graph.graph.input[0].name).load()
    lookup = CacheLookup(CacheKey("x", "y", {}), None, False, "off")
    return OrtInt8Builder(selfie, work, calib, "minmax", CPU_RECIPE, lookup)


def test_the_scores_leave_in_float_and_kept_layers_hand_on_float(selfie, people, tmp_path, monkeypatch):
    """The nodes after the last convolution (Sigmoid, the background/foreground pair) stay in float, so
    the probability the threshold reads is not rounded to 8 bits: that alone lifts agreement with FP32
    on the held-out photos. A layer kept in FP32 hands its output on in float; a candidate with every
    node kept computes what FP32 computes."""
    builder = _builder(selfie, people, tmp_path)
    held = _inputs(selfie, sorted(people.glob("*.png"))[CALIB:])
    ref = _masks(selfie, held)
    graph = builder.graph()

    def score(exclude: list[str]) -> tuple[float, onnx.ModelProto]:
        builder.build(exclude, tmp_path / "c.onnx")
        model = onnx.load(str(tmp_path / "c.onnx"))
        ious = [_fg_iou(a, b) for a, b in zip(_masks(model.SerializeToString(), held), ref)]
        return float(np.mean(ious)), model

    tail = builder.output_tail()
    assert {n.op_type for n in graph.graph.node if n.name in tail} >= {"Sigmoid", "Concat"}
    with_tail, model = score([])
    producer = {o: n for n in model.graph.node for o in n.output}
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid" and n.name in tail)
    assert producer[sigmoid.input[0]].op_type != "DequantizeLinear"
    assert producer[model.graph.output[0].name].op_type != "DequantizeLinear"
    monkeypatch.setattr(type(builder), "output_tail", lambda self: [])
    rounded, _ = score([])
    assert with_tail > rounded + 0.01, (rounded, with_tail)
    # a convolution kept in FP32 in the middle of the network: its readers get its float output
    mid = [n for n in graph.graph.node if n.op_type == "Conv"][len(graph.graph.node) // 6].name
    _, model = score([mid])
    node = next(n for n in model.graph.node if n.name == mid)
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    assert readers and all(r.op_type != "QuantizeLinear" for r in readers), [r.op_type for r in readers]
    none, _ = score([n.name for n in graph.graph.node if n.name])
    assert none == 1.0


def test_mixed_int8_meets_the_issue_goal_on_held_out_people(selfie, people, tmp_path):
    """--max-drop 3 --max-worst-drop 10 (foreground IoU >= 0.97 on average and >= 0.90 on the worst photo),
    checked here independently of the tool's own figures; INT8 is written only with --allow-slower
    when it is not faster than FP32 on this machine."""
    art = tmp_path / "art"
    art.mkdir()
    for name in ("model.onnx", "manifest.json"):
        (art / name).write_bytes((selfie.parent / name).read_bytes())
    r = runner.invoke(app, ["quantize", "--model", str(art / "model.onnx"), "--precision", "int8", "--target", "cpu",
                            "--calib", str(people), "--calib-size", str(CALIB), "--budget-images", str(CALIB), "--max-drop", "3",
                            "--max-worst-drop", "10", "--allow-slower"])
    assert r.exit_code == 0, r.output
    int8 = art / "model.int8-cpu.onnx"
    entry = json.loads((art / "manifest.json").read_text())["artifacts"][int8.name]
    assert entry["accuracy"]["labels"] == "fp32"
    held = _inputs(art / "model.onnx", sorted(people.glob("*.png"))[CALIB:])
    ious = [_fg_iou(a, b) for a, b in zip(_masks(int8, held), _masks(art / "model.onnx", held))]
    assert np.mean(ious) >= 0.97 and min(ious) >= 0.90, ious


def test_default_budget_refuses_and_points_to_fp16(selfie, people, tmp_path):
    """The default budget (0.5 points) is out of INT8's reach on this model: no file, and the way to FP16.
    One calibration method (minmax), because choosing among four (--method auto, the cpu default) is
    covered by the test above and would make this the slowest test of the suite."""
    art = tmp_path / "art"
    art.mkdir()
    for name in ("model.onnx", "manifest.json"):
        (art / name).write_bytes((selfie.parent / name).read_bytes())
    r = runner.invoke(app, ["quantize", "--model", str(art / "model.onnx"), "--precision", "int8", "--target", "cpu",
                            "--calib", str(people), "--calib-size", str(CALIB), "--method", "minmax"])
    assert r.exit_code != 0 and "fp16" in r.output and "Traceback" not in r.output, r.output
    assert not (art / "model.int8-cpu.onnx").exists()
