import csv
import json
import tempfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.runtime.trt.runtime import tensorrt_installed
from aspp_deploy.cli import app
from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    return onnx_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("art"), ExportOptions()).onnx_path


def test_bench_onnxruntime_json(tiny_onnx, tmp_path):
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["bench", "--backend", "onnxruntime", "--model", str(tiny_onnx), "--iters", "7",
                            "--warmup", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    e2e = d["end_to_end"]
    assert len(d["samples_ms"]) == 7 and e2e["n"] == 7
    assert e2e["min"] <= e2e["p50"] <= e2e["p90"] <= e2e["p99"] <= e2e["max"]
    assert d["preprocess"]["mean"] > 0 and d["postprocess"]["mean"] > 0
    assert d["input"] == [128, 128]


def test_bench_torch_default_size_from_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "t.json"
    r = runner.invoke(app, ["bench", "--backend", "torch", "--model", str(tiny_checkpoint), "--iters", "2",
                            "--warmup", "0", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["backend"] == "torch"


@pytest.mark.parametrize("args,msg", [
    (["--backend", "onnxruntime", "--model", "model.pt"], "is not a onnxruntime model"),
    (["--backend", "torch", "--model", "model.onnx"], "is not a torch model"),
    (["--backend", "trt", "--model", "model.onnx"], "is not a trt model"),
])
def test_bench_wrong_kind_of_model(args, msg):
    r = runner.invoke(app, ["bench", *args])
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output


def test_bench_unknown_backend():
    r = runner.invoke(app, ["bench", "--backend", "tflite"])
    assert r.exit_code != 0 and "tflite" in r.output and "Traceback" not in r.output


def test_bench_batch_outside_static_shape(tiny_onnx):
    r = runner.invoke(app, ["bench", "--backend", "onnxruntime", "--model", str(tiny_onnx), "--batch", "4"])
    assert r.exit_code == 1 and "static batch of 1" in r.output


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here")
def test_bench_trt_without_tensorrt_says_what_is_missing(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    r = runner.invoke(app, ["bench", "--backend", "trt", "--model", str(engine)])
    assert r.exit_code == 1 and "TensorRT is not installed" in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


@pytest.fixture
def compared(tiny_compare):
    """The session's one compare of the tiny model on the tiny split (tests/conftest.py: every row that
    runs here, 3 latency rounds of 3 calls), shared by the tests that read its output."""
    return tiny_compare


def test_compare_rows_reports_and_figures(compared, tiny_checkpoint, tiny_data):
    from aspp_deploy.backends.torch_backend import TorchRunner
    from aspp_deploy.eval.evaluate import evaluate

    r, tmp_path, report, out = compared
    assert r.exit_code == 0, r.output
    assert "pip install 'aspp-deploy[openvino]'" in r.output
    assert "accuracy on 4 validation images" in r.output  # the whole tiny split: under --limit's 64
    rows = json.loads(out.read_text())["rows"]
    by = {(x["backend"], x["precision"], x["device"]): x for x in rows}
    ref, ort_row = by[("torch", "fp32", "cpu")], by[("onnxruntime", "fp32", "cpu")]
    assert ref["status"] == ort_row["status"] == "ok"
    # independent computation of the reference mIoU
    with TorchRunner(tiny_checkpoint) as tr:
        expected = evaluate(tr, tiny_data, tr.preprocess, tr.classes)
    assert ref["miou"] == pytest.approx(expected.miou)
    assert ort_row["pixel_agreement"] >= 0.999 and ort_row["max_abs_logit_diff"] < 1e-3
    assert ort_row["miou"] == pytest.approx(ref["miou"], abs=1e-3)
    assert (tmp_path / "a" / "model.onnx").is_file()
    # the reduced-precision ONNX rows were made by the precision package and measured
    for precision in ("fp16", "int8 (cpu QDQ)", "int8 (TensorRT QDQ)"):
        row = by[("onnxruntime", precision, "cpu")]
        assert row["status"] == "ok", row
        assert 0.5 < row["pixel_agreement"] <= 1.0 and row["max_abs_logit_diff"] > 0
    assert by[("onnxruntime", "fp16", "cpu")]["pixel_agreement"] > 0.99
    # rows that cannot run here are present with a reason
    for x in rows:
        assert x["status"] in ("ok", "unavailable", "failed")
        if x["status"] != "ok":
            assert x["reason"]
    assert ("trt", "int8", "cuda") in by and ("torch", "fp16", "cuda") in by
    # reports are written and readable
    assert json.loads((report / "results.json").read_text())["machine"]["cores"] >= 1
    with open(report / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "| torch | fp32 | cpu |" in (report / "summary.md").read_text()
    for png in ["latency.png", "miou_vs_latency.png", *[f"overlays/{p.name}" for p in (report / "overlays").iterdir()]]:
        with Image.open(report / png) as im:
            assert im.size[0] > 100
    assert len(list((report / "overlays").iterdir())) == 3


def test_compare_times_every_row_in_interleaved_rounds(compared):
    """After the accuracy passes, every row that ran is timed in 3 rounds of 3 calls, every row once
    per round in a new order; each speed-up is the median of the per-round ratios to the reference."""
    r, _, report, out = compared
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    settings, rows = data["settings"], [x for x in data["rows"] if x["status"] == "ok"]
    assert len(rows) >= 4 and (settings["rounds"], settings["iters"], settings["warmup"]) == (3, 3, 1)
    labels = [f"{x['backend']} {x['precision']} ({x['device']})" for x in rows]
    for x in rows:
        lat = x["latency"]
        assert [len(rnd) for rnd in lat["rounds_ms"]] == [3, 3, 3] and all(v > 0 for rnd in lat["rounds_ms"] for v in rnd)
        assert sorted(lat["samples_ms"]) == sorted(v for rnd in lat["rounds_ms"] for v in rnd)
        assert lat["end_to_end"]["n"] == 9 and x["p50_ms"] == pytest.approx(float(np.median(lat["samples_ms"])))
        assert x["latency_rounds"] == 3 and x["reused"] == [] and lat["run"] == rows[0]["latency"]["run"]
    # the rounds interleave: each round ran every row once, and every row's block of round k started
    # before any row's block of round k + 1; the recorded order is the order the blocks started in
    order = settings["latency_order"]
    assert len(order) == 3 and all(sorted(o) == sorted(labels) for o in order)
    assert len({tuple(o) for o in order}) > 1  # a new order: no row always runs right after another
    started = {label: x["latency"]["started_ms"] for label, x in zip(labels, rows)}
    for k in range(3):
        assert sorted(labels, key=lambda label: started[label][k]) == order[k]
        if k < 2:
            assert max(s[k] for s in started.values()) < min(s[k + 1] for s in started.values())
    # speed-ups: per round the reference's median over the row's, then the median of those ratios
    ref = rows[0]["latency"]["rounds_ms"]
    for x in rows:
        ratios = [float(np.median(a)) / float(np.median(b)) for a, b in zip(ref, x["latency"]["rounds_ms"])]
        assert x["speedup_rounds"] == pytest.approx(ratios) and x["speedup_paired"] is True
        assert x["speedup"] == pytest.approx(float(np.median(ratios)))
        assert (x["speedup_min"], x["speedup_max"]) == (pytest.approx(min(ratios)), pytest.approx(max(ratios)))
    assert rows[0]["speedup_rounds"] == [1.0, 1.0, 1.0]
    # the reports say how latency was timed, and carry the spread
    with open(report / "results.csv") as f:
        csv_rows = [c for c in csv.DictReader(f) if c["status"] == "ok"]
    assert [float(c["speedup_min"]) for c in csv_rows] == pytest.approx([x["speedup_min"] for x in rows])
    summary = (report / "summary.md").read_text()
    assert "3 interleaved rounds x 3 timed calls per row after 1 warm-up calls" in summary
    assert f"{rows[1]['speedup']:.2f}x ({rows[1]['speedup_min']:.2f}–{rows[1]['speedup_max']:.2f})" in summary
    assert "3 interleaved rounds x 3 timed calls" in " ".join(r.output.split())


def test_compare_reexports_stale_onnx(tiny_checkpoint, tiny_data, tmp_path, compared_artifacts):
    from tests.conftest import make_checkpoint

    art = compared_artifacts(tmp_path / "a")  # then its model.onnx replaced by another checkpoint's
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    onnx_from_checkpoint(other, art, ExportOptions())
    r = runner.invoke(app, ["compare", "--checkpoint", str(tiny_checkpoint), "--artifacts", str(art),
                            "--data", str(tiny_data), "--limit", "1", "--iters", "1", "--warmup", "0",
                            "--report", str(tmp_path / "r")])
    assert r.exit_code == 0 and "exported from another checkpoint" in r.output


def test_quantized_variant_made_from_another_model_is_stale(tiny_checkpoint, tiny_data, tmp_path):
    from aspp_deploy.bench.rows import variant_is_stale
    from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
    from tests.conftest import make_checkpoint

    art = tmp_path / "a"
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    fp32 = onnx_from_checkpoint(other, art, ExportOptions(64, 64)).onnx_path
    fp16 = quantized_onnx_from_fp32(fp32, QuantizeOptions("fp16", data=tiny_data, budget_images=0, eval_images=1,
                                                          backend="ort")).onnx_path
    assert not variant_is_stale(fp16, fp32)
    onnx_from_checkpoint(tiny_checkpoint, art, ExportOptions(64, 64))  # another checkpoint, same file name
    assert variant_is_stale(fp16, fp32)
    onnx_from_checkpoint(other, art, ExportOptions(96, 96))  # same checkpoint, another FP32 ONNX
    assert variant_is_stale(fp16, fp32)


@pytest.mark.parametrize("version, fp16_source", [((8, 5), ("model.onnx", "fp32")), ((8, 6), ("model.onnx", "fp32")),
                                                  ((10, 3), ("model.fp16.onnx", "fp16")),
                                                  ((11, 0), ("model.fp16.onnx", "fp16"))])
def test_engine_rows_build_from_the_onnx_each_version_takes(version, fp16_source):
    from aspp_deploy.bench.rows import engine_source
    from aspp_deploy.runtime.trt.plan import BuildRequest, make_build_plan

    assert engine_source("fp16", version) == fp16_source
    for precision in ("fp32", "fp16", "int8"):
        _, kind = engine_source(precision, version)
        make_build_plan(version, BuildRequest(precision=precision, onnx_kind=kind))  # the plan accepts it


def test_engine_is_stale_when_its_onnx_changed(tmp_path):
    from aspp_deploy.bench.rows import engine_is_stale
    from aspp_deploy.io import sha256_file

    onnx, engine = tmp_path / "model.onnx", tmp_path / "model.fp32.engine"
    onnx.write_bytes(b"graph v1")
    assert not engine_is_stale(engine, tmp_path)  # no engine yet: missing, not stale
    engine.write_bytes(b"plan")
    assert engine_is_stale(engine, tmp_path)  # no manifest
    (tmp_path / "model.fp32.engine.json").write_text(json.dumps(
        {"source_onnx": {"path": "/elsewhere/model.onnx", "sha256": sha256_file(onnx), "kind": "fp32"}}))
    assert not engine_is_stale(engine, tmp_path)
    onnx.write_bytes(b"graph v2")
    assert engine_is_stale(engine, tmp_path)


def test_bench_labels_the_precision_from_the_manifest(tiny_checkpoint, tiny_data, tmp_path):
    """An FP16 file is reported as fp16 (title and JSON), not under a default fp32 label."""
    from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

    fp32 = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a", ExportOptions(64, 64)).onnx_path
    fp16 = quantized_onnx_from_fp32(fp32, QuantizeOptions("fp16", data=tiny_data, budget_images=0, eval_images=1,
                                                          backend="ort")).onnx_path
    out = tmp_path / "b.json"
    r = runner.invoke(app, ["bench", "--backend", "onnxruntime", "--model", str(fp16), "--iters", "2",
                            "--warmup", "0", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["precision"] == "fp16" and "onnxruntime fp16" in r.output


def test_max_logit_difference_is_over_every_measured_image(tiny_checkpoint, tmp_path, monkeypatch):
    """One definition with `quantize`: the largest |logit difference| over all the images the row's accuracy
    is measured on (not the first few), computed here independently from the two runners' outputs."""
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner
    from aspp_deploy.backends.torch_backend import TorchRunner
    from aspp_deploy.bench.compare import RowSpec, ValidationSet, run_compare
    from aspp_deploy.data.synthetic import SynthConfig, write_synthetic_voc
    from tests.conftest import TINY_SIZE

    data = write_synthetic_voc(tmp_path / "d", {"val": 12}, seed=5, cfg=SynthConfig(size=TINY_SIZE))
    onnx_path = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a", ExportOptions()).onnx_path
    torch_runner = TorchRunner(tiny_checkpoint)
    val = ValidationSet(data, torch_runner.preprocess, len(torch_runner.classes), None)
    specs = [RowSpec("torch", "fp32", "cpu", tiny_checkpoint), RowSpec("onnxruntime", "fp32", "cpu", onnx_path)]

    def open_row(s):
        return TorchRunner(s.artifact) if s.backend == "torch" else OrtRunner(s.artifact)

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the reference's logits go
    rows = run_compare(specs, val, torch_runner.classes, open_row, warmup=0, iters=1)
    assert [r.status for r in rows] == ["ok", "ok"]
    ort_runner = OrtRunner(onnx_path)
    diffs = [float(np.abs(ort_runner.infer(x) - torch_runner.infer(x)).max()) for x in val.inputs]
    assert len(diffs) == 12
    assert rows[1].max_abs_logit_diff == pytest.approx(max(diffs), rel=1e-6)
    assert rows[0].max_abs_logit_diff == 0.0
    assert not list(scratch.iterdir()), "the logit files were left behind"
