"""The OpenVINO backend: same outputs as ONNX Runtime on the same ONNX, the precision pinned and
recorded, the compiled model cached, the CLI and compare wiring, and one clear line where
OpenVINO is not installed."""

from __future__ import annotations

import builtins
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from aspp_deploy.backends.openvino_backend import openvino_unavailable_reason
from aspp_deploy.cli import app
from aspp_deploy.errors import MissingDependencyError

needs_openvino = pytest.mark.skipif(openvino_unavailable_reason() is not None,
                                    reason=openvino_unavailable_reason() or "")
cli = CliRunner()


def _inputs(n: int = 3, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(n)]


@needs_openvino
def test_fp32_outputs_match_onnxruntime(exported_64, tmp_path):
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner
    from aspp_deploy.backends.openvino_backend import OpenVinoRunner

    with OpenVinoRunner(exported_64, threads=1, cache_dir=tmp_path / "c") as ov, OrtRunner(exported_64, threads=1) as ort:
        for x in _inputs():
            a, b = ov.infer(x), ort.infer(x)
            assert a.shape == b.shape and a.dtype == np.float32
            assert np.abs(a - b).max() < 1e-3, np.abs(a - b).max()
            assert (a.argmax(1) == b.argmax(1)).mean() > 0.999


@needs_openvino
def test_int8_cpu_model_runs_and_agrees_with_onnxruntime(int8_cpu_64, tmp_path):
    """Both runtimes run the Q/DQ file in INT8; their roundings may differ a little, the
    segmentation must not."""
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner
    from aspp_deploy.backends.openvino_backend import OpenVinoRunner

    with OpenVinoRunner(int8_cpu_64, threads=1, cache_dir=tmp_path / "c") as ov, OrtRunner(int8_cpu_64, threads=1) as ort:
        agree = [float((ov.infer(x).argmax(1) == ort.infer(x).argmax(1)).mean()) for x in _inputs()]
    assert min(agree) > 0.95, agree


@needs_openvino
def test_precision_hint_threads_and_streams_are_pinned_and_recorded(exported_64, tmp_path):
    from aspp_deploy.backends.openvino_backend import OpenVinoRunner

    with OpenVinoRunner(exported_64, threads=1, cache_dir=tmp_path / "c") as r:
        extra = r.info.extra
    # f32 whatever the CPU's default (bf16 on AVX-512 BF16 / AMX CPUs)
    assert extra["inference_precision"] == "f32"
    assert extra["num_threads"] == 1 and int(extra["num_streams"]) == 1
    assert r.info.backend == "openvino" and r.info.device == "cpu"


@needs_openvino
def test_compiled_model_is_cached_and_reused(exported_64, tmp_path):
    from aspp_deploy.backends.openvino_backend import OpenVinoRunner

    cache = tmp_path / "ovcache"
    with OpenVinoRunner(exported_64, threads=1, cache_dir=cache) as first:
        assert first.info.extra["loaded_from_cache"] is False
        assert first.info.extra["cache_dir"] == str(cache)
    assert any(cache.iterdir()), "nothing written to the cache folder"
    with OpenVinoRunner(exported_64, threads=1, cache_dir=cache) as second:
        assert second.info.extra["loaded_from_cache"] is True


def test_default_cache_folder_follows_aspp_deploy_cache(tmp_path, monkeypatch):
    from aspp_deploy.backends.openvino_backend import CACHE_FOLDER, cache_dir_for

    artifact = tmp_path / "a" / "model.onnx"
    artifact.parent.mkdir()
    monkeypatch.setenv("ASPP_DEPLOY_CACHE", str(tmp_path / "env"))
    assert cache_dir_for(artifact) == tmp_path / "env" / "openvino"
    monkeypatch.delenv("ASPP_DEPLOY_CACHE")
    assert cache_dir_for(artifact) == artifact.parent.resolve() / CACHE_FOLDER


@pytest.fixture
def without_openvino(monkeypatch):
    """Make ``import openvino`` fail as it does where the package is not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ModuleNotFoundError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_not_installed_gives_the_pip_command(without_openvino, exported_64):
    from aspp_deploy.backends.registry import open_runner, openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    assert reason is not None and "pip install 'aspp-deploy[openvino]'" in reason
    with pytest.raises(MissingDependencyError, match=r"aspp-deploy\[openvino\]"):
        open_runner("openvino", exported_64)


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_cli_without_openvino_is_one_line(without_openvino, exported_64, command):
    result = cli.invoke(app, [command, "--backend", "openvino", "--model", str(exported_64)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "pip install 'aspp-deploy[openvino]'" in result.output


def test_compare_rows_say_why_without_openvino(without_openvino, tmp_path):
    from aspp_deploy.bench.rows import default_row_specs

    specs = default_row_specs(None, tmp_path, lambda: tmp_path / "model.onnx", lambda *a, **k: None)
    ov = [s for s in specs if s.backend == "openvino"]
    assert [(s.precision, s.artifact.name) for s in ov] == [("fp32", "model.onnx"),
                                                             ("int8 (cpu QDQ)", "model.int8-cpu.onnx")]
    assert all(s.device == "cpu" and "aspp-deploy[openvino]" in (s.unavailable or "") for s in ov)


@needs_openvino
def test_compare_rows_run_where_openvino_is_installed(tmp_path):
    from aspp_deploy.bench.rows import default_row_specs

    specs = default_row_specs(None, tmp_path, lambda: tmp_path / "model.onnx", lambda *a, **k: None)
    assert [s.unavailable for s in specs if s.backend == "openvino"] == [None, None]


@needs_openvino
def test_bench_cli(exported_64, tmp_path):
    out = tmp_path / "bench.json"
    result = cli.invoke(app, ["bench", "--backend", "openvino", "--model", str(exported_64), "--warmup", "1",
                              "--iters", "3", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["backend"] == "openvino" and data["iters"] == 3


@needs_openvino
def test_eval_cli_matches_onnxruntime(exported_64, tiny_data, tmp_path):
    results = {}
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"{backend}.json"
        result = cli.invoke(app, ["eval", "--backend", backend, "--model", str(exported_64), "--data", str(tiny_data),
                                  "--threads", "1", "--json", str(out)])
        assert result.exit_code == 0, result.output
        results[backend] = json.loads(out.read_text())
    assert results["openvino"]["backend"] == "openvino"
    assert abs(results["openvino"]["miou"] - results["onnxruntime"]["miou"]) < 1e-3


@needs_openvino
def test_bad_model_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    result = cli.invoke(app, ["bench", "--backend", "openvino", "--model", str(bad)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    result = cli.invoke(app, ["bench", "--backend", "openvino", "--model", str(tmp_path / "model.engine")])
    assert result.exit_code == 1 and "is not a openvino model" in result.output, result.output


def test_openvino_int8_row_does_not_remake_what_the_onnxruntime_row_remade(tmp_path, monkeypatch):
    """Staleness of the shared INT8 file is decided when the row runs: once the ONNX Runtime row
    has remade it, the OpenVINO row reads it as it is."""
    from aspp_deploy.bench import rows as rows_mod

    stale = {"now": True}
    monkeypatch.setattr(rows_mod, "variant_is_stale", lambda variant, fp32: stale["now"])
    specs = rows_mod.default_row_specs(None, tmp_path, lambda: tmp_path / "model.onnx", lambda *a, **k: None)
    ov_int8 = next(s for s in specs if s.backend == "openvino" and s.precision.startswith("int8"))
    assert ov_int8.refresh
    stale["now"] = False  # the onnxruntime int8 (cpu QDQ) row remade it
    assert not ov_int8.refresh
