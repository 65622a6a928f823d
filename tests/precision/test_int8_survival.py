"""INT8 that survives real networks (issue 19): the budget judges the task metric on average and on the
worst image, the calibration method is chosen by measurement, a slower or budget-breaking INT8 is
refused with a pointer to FP16, matrix products are quantized, and MobileNet-style graphs get
sensible layer groups. No test times anything against a threshold: the speed verdict is fed a report."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.precision import speed
from aspp_deploy.precision.accuracy import Comparison
from aspp_deploy.precision.budget import Budget, MethodTrial, best_trial, choose_method, run_budget
from aspp_deploy.precision.groups import LayerGroup, budget_groups, grouping_rule, layer_groups
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
from tests.precision.conftest import labelled_by_model, outlier_model, random_images

runner = CliRunner()


def _cmp(drop: float, worst: float | None) -> Comparison:
    """A binary model's comparison: foreground IoU 0.9 for FP32, ``drop`` points less for the candidate."""
    return Comparison(4, 0.9, 0.9, 0.99, 0.1, "fp32", 0.9, 0.9 - drop / 100,
                      None if worst is None else 0.9 - worst / 100, None if worst is None else 0.9, "img")


class _FakeBuilder:
    """Writes the excluded node names as the 'model': the fake reference reads them back."""

    def build(self, exclude: list[str], out: Path) -> None:
        out.write_text(json.dumps(sorted(exclude)))


class _FakeReference:
    limit = 4

    def __init__(self, table: Table) -> None:
        self.table, self.seen = table, []

    def compare(self, candidate: Path) -> Comparison:
        kept = tuple(json.loads(candidate.read_text()))
        self.seen.append(kept)
        return _cmp(*self.table[kept])


GROUPS = [LayerGroup("a", ["a1"], 10), LayerGroup("b", ["b1"], 10)]
# mean within 0.5 from the start, but one image loses 12 points; keeping b repairs that image
Table = dict[tuple[str, ...], tuple[float, "float | None"]]
WORST_TABLE: Table = {(): (0.3, 12.0), ("a1",): (0.1, 12.0), ("b1",): (0.3, 2.0), ("a1", "b1"): (0.0, 0.0)}


def test_worst_image_budget_is_respected(tmp_path):
    path, result = run_budget(_FakeBuilder(), _FakeReference(WORST_TABLE), GROUPS, 0.5, tmp_path, worst_points=7.0)
    assert result.metric == "foreground IoU"
    assert result.base_drop == pytest.approx(0.3) and result.base_worst == pytest.approx(12.0)
    assert [k["group"] for k in result.kept] == ["b"], "the group that repairs the worst image must be kept"
    assert result.met and result.final_worst == pytest.approx(2.0) and not result.everything_kept
    assert json.loads(path.read_text()) == ["b1"]
    d = result.to_dict()
    assert d["max_worst_drop_points"] == 7.0 and d["worst_drop_all_reduced_points"] == pytest.approx(12.0)
    assert "sensitivity rank 1" in d["kept_in_higher_precision"][0]["why"]
    # the mean alone would have been met at once: with the worst image unchecked nothing is kept
    _, unchecked = run_budget(_FakeBuilder(), _FakeReference(WORST_TABLE), GROUPS, 0.5, tmp_path / "u",
                              worst_points=0.0) if (tmp_path / "u").mkdir() is None else (None, None)
    assert unchecked is not None and unchecked.met and unchecked.kept == []


def test_budget_that_needs_every_group_reports_everything_kept(tmp_path):
    table: Table = {(): (5.0, 20.0), ("a1",): (3.0, 15.0), ("b1",): (3.0, 15.0), ("a1", "b1"): (0.0, 0.0)}
    _, result = run_budget(_FakeBuilder(), _FakeReference(table), GROUPS, 0.5, tmp_path)
    assert result.met and result.everything_kept
    why = speed.verdict(result.met, result.everything_kept, None, result.metric, "0.5 points")
    assert why is not None and "--precision fp16" in why
    assert speed.verdict(False, False, None, "foreground IoU", "0.5 points") is not None
    assert speed.verdict(True, False, None, "foreground IoU", "0.5 points") is None


def test_method_auto_picks_the_best_measured_method(tmp_path):
    drops: Table = {("minmax",): (4.0, 9.0), ("entropy",): (1.0, 3.0), ("percentile 99.99",): (2.0, 2.0),
                    ("percentile 99.999",): (1.0, 8.0)}
    trials = [MethodTrial(label[0], label[0].split()[0], None) for label in drops]

    def build_all(t: MethodTrial) -> Path:
        p = tmp_path / f"{t.label}.txt"
        p.write_text(t.label)
        return p

    class Ref:
        limit = 4

        def compare(self, candidate: Path) -> Comparison:
            return _cmp(*drops[(candidate.read_text(),)])

    best, path, cmp, why = choose_method(trials, build_all, Ref(), Budget(0.5, 7.0))
    # entropy and percentile 99.999 lose the same on average; percentile's worst image breaks the budget
    assert best.label == "entropy" and path.read_text() == "entropy" and cmp.score_drop_points == pytest.approx(1.0)
    assert "1.00 points" in why and "minmax 4.00" in why and all(t.drop is not None for t in trials)
    assert best_trial(trials) is best
    # with the worst image unchecked the tie goes to the method listed first
    for t in trials:
        t.shortfall = Budget(0.5, 0.0).shortfall(_cmp(*drops[(t.label,)]))
    again = best_trial(trials)
    assert again is not None and again.label == "entropy"


def test_method_auto_in_the_pipeline_records_every_method_and_keeps_the_best(tmp_path):
    model = outlier_model(tmp_path / "m" / "model.onnx")
    data = labelled_by_model(model, tmp_path / "data", 4, seed=1)
    calib = random_images(tmp_path / "cal", 8, seed=2)
    r = quantized_onnx_from_fp32(model, QuantizeOptions("int8", "cpu", calib, data=data, max_miou_drop=5.0,
                                                        budget_images=4, eval_images=2))
    cal = r.entry["quantization"]["calibration"]
    choice = cal["method_choice"]
    assert choice["requested"] == "auto"
    tried = choice["tried"]
    assert [t["label"] for t in tried] == ["minmax", "entropy", "percentile 99.99", "percentile 99.999"]
    scored = [t for t in tried if t["error"] is None]
    best = min(scored, key=lambda t: (round(t["shortfall_points"], 6), round(t["drop_points"], 6)))
    assert choice["chosen"] == best["label"] and cal["method"] == best["method"]
    assert r.entry["quantization"]["settings"]["method"] == best["method"]
    # each method calibrated once into its own cache entry: a rerun reuses all of them
    entries = sorted((model.parent / "calibration-cache").glob("*.key.json"))
    assert len(entries) == len(scored)
    budget = r.entry["quantization"]["budget"]
    assert budget["metric"] == "mIoU" and budget["max_drop_points"] == 5.0


def _fake_report(int8_ms: float, fp32_ms: float = 1.0) -> speed.SpeedReport:
    rep = speed.SpeedReport(3, 2, 0)
    rep.timings.append(speed.RuntimeTiming("onnxruntime", {"fp32": fp32_ms, "int8": int8_ms}))
    return rep


@pytest.mark.parametrize("max_drop, extra, fragment", [
    ("0", [], "only with every layer group kept in higher precision"),  # the budget needs all of FP32
    ("5", [], "not faster than FP32 here (1.25 ms on onnxruntime against 1.00 ms"),  # met, but slower
    ("5", ["--allow-slower"], None),  # met, slower, written as asked (with a note)
])
def test_cli_refuses_an_int8_with_no_faster_mix_and_points_to_fp16(tmp_path, monkeypatch, max_drop, extra, fragment):
    model = outlier_model(tmp_path / "m" / "model.onnx")
    data = labelled_by_model(model, tmp_path / "data", 4, seed=1)
    calib = random_images(tmp_path / "cal", 8, seed=2)
    # this machine's timing is not what is tested: INT8 is reported 25% slower than FP32
    monkeypatch.setattr(speed, "measure", lambda *a, **k: _fake_report(1.25))
    r = runner.invoke(app, ["quantize", "--model", str(model), "--precision", "int8", "--target", "cpu", "--calib",
                            str(calib), "--data", str(data), "--method", "minmax", "--max-drop", max_drop,
                            "--budget-images", "4", "--eval-images", "1", *extra])
    artifacts = json.loads((model.parent / "manifest.json").read_text())["artifacts"]
    if fragment is None:
        assert r.exit_code == 0, r.output
        notes = artifacts["model.int8-cpu.onnx"]["notes"]
        assert any("not faster than FP32" in n for n in notes), notes
        return
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert fragment in r.output and "no INT8 file written" in r.output and "--precision fp16" in r.output
    assert list(model.parent.glob("*int8*")) == []
    assert not any("int8" in name for name in artifacts)


def test_cli_writes_int8_with_its_speed_when_faster(tmp_path, monkeypatch):
    model = outlier_model(tmp_path / "m" / "model.onnx")
    data = labelled_by_model(model, tmp_path / "data", 4, seed=1)
    calib = random_images(tmp_path / "cal", 8, seed=2)
    monkeypatch.setattr(speed, "measure", lambda *a, **k: _fake_report(0.5))
    r = runner.invoke(app, ["quantize", "--model", str(model), "--precision", "int8", "--target", "cpu",
                            "--calib", str(calib), "--data", str(data), "--method", "minmax", "--max-miou-drop", "5",
                            "--budget-images", "4", "--eval-images", "1"])
    assert r.exit_code == 0, r.output
    entry = json.loads((model.parent / "manifest.json").read_text())["artifacts"]["model.int8-cpu.onnx"]
    q = entry["quantization"]
    assert q["speed"]["int8_vs_fp32"] == pytest.approx(2.0) and "2.00x" in r.output
    assert q["budget"]["met"] and q["budget"]["kept_in_higher_precision"]
    assert all(k["why"] for k in q["budget"]["kept_in_higher_precision"])


@pytest.mark.parametrize("target", ["cpu", "trt"])
def test_matmul_and_gemm_are_quantized(tmp_path, target):
    from tests.precision.mobilenet_like import export

    model = export(tmp_path / "m" / "model.onnx", attention=True)
    calib = random_images(tmp_path / "cal", 10, seed=3, size=64)
    r = quantized_onnx_from_fp32(model, QuantizeOptions("int8", target, calib, method="minmax", backend="ort",
                                                        budget_images=0, eval_images=1))
    m = onnx.load(str(r.onnx_path))
    producer = {o: n for n in m.graph.node for o in n.output}
    mm = [n for n in m.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert mm, "the attention block exports matrix products"
    for n in mm:
        dq = [i for i in n.input[:2] if producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"]
        assert len(dq) == 2, f"{n.name}: inputs not both quantized"
    assert r.entry["quantization"]["matmul"] == {"total": len(mm), "quantized": len(mm)}


def test_mobilenet_like_graph_is_cut_into_blocks_with_their_se_gating():
    pytest.importorskip("torch")
    import tempfile

    from tests.precision.mobilenet_like import export

    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(str(export(Path(tmp) / "model.onnx")))
    assert grouping_rule(model) == "structure"
    groups = layer_groups(model)
    names = [g.name for g in groups]
    assert names[0] == "graph.stem" and len(groups) >= 6 and all(n.startswith("graph.") for n in names)
    by_name = {n.name: n for n in model.graph.node}
    se = [g for g in groups if any(by_name[x].op_type == "Mul" for x in g.nodes if x in by_name)]
    assert len(se) == 4, "each SE block's gating Mul belongs to the block of its convolutions"
    for g in se:
        ops = [by_name[x].op_type for x in g.nodes if x in by_name]
        assert ops.count("Conv") >= 4 and "GlobalAveragePool" in ops
    total = sum(g.flops for g in groups)
    assert max(g.flops for g in groups) * 2 < total  # no piece holds half the model
    chosen, granularity = budget_groups(model)
    assert granularity == "groups" and [g.name for g in chosen] == names


def test_speed_is_measured_in_interleaved_rounds_and_a_broken_variant_is_named(exported, tmp_path):
    """``quantize --target cpu``'s speed check: every variant timed in the same rounds as compare's rows
    (``bench.rounds``), each round's median kept; a file the runtime cannot load is named, not fatal."""
    import numpy as np

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    shape = [d.dim_value or 1 for d in onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim]
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    report = speed.measure({"fp32": exported, "int8": exported, "fp16": broken}, batch, runtimes=("onnxruntime",),
                           rounds=3, iters=2)
    (timing,) = report.timings
    assert set(timing.p50_ms) == {"fp32", "int8"} and all(ms > 0 for ms in timing.p50_ms.values())
    assert all(len(timing.rounds_ms[v]) == 3 for v in ("fp32", "int8"))
    assert set(timing.failed) == {"fp16"} and timing.failed["fp16"]
    assert report.speedup("int8") is not None and "interleaved rounds" in report.to_dict()["method"]
    assert report.to_dict()["cpu"]["cores"] and isinstance(report.to_dict()["cpu"]["flags"], list)
