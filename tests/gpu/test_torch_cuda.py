"""The PyTorch CUDA paths, on a real CUDA device: the runner (FP32, FP16 channels_last), its CUDA-event
phases, and ``bench``, ``predict`` and ``compare`` on ``cuda``. They skip where PyTorch sees no CUDA
device (CI); they were run on a lent GPU machine (see the issue notes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.backends.base import class_ids
from aspp_deploy.backends.torch_backend import TorchRunner
from aspp_deploy.cli import app

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs a CUDA device (PyTorch sees none)")]
runner = CliRunner()


def _batch(seed: int = 0, n: int = 1, size: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def test_cuda_fp32_and_fp16_agree_with_the_cpu(tiny_checkpoint):
    x = _batch(n=2)
    cpu = TorchRunner(tiny_checkpoint, device="cpu").infer(x)
    gpu32 = TorchRunner(tiny_checkpoint, device="cuda")
    gpu16 = TorchRunner(tiny_checkpoint, device="cuda", precision="fp16")
    assert gpu16.channels_last and gpu16.info.device.startswith("cuda")
    out32, out16 = gpu32.infer(x), gpu16.infer(x)
    assert out32.dtype == np.float32 and out16.dtype == np.float32 and out32.shape == cpu.shape
    scale = float(np.abs(cpu).max())
    assert float(np.abs(out32 - cpu).max()) < 1e-2 * scale  # TF32 convolutions allowed
    assert float(np.abs(out16 - cpu).max()) < 5e-2 * scale
    ref = class_ids(cpu, False)
    assert np.mean(class_ids(out32, False) == ref) > 0.999
    assert np.mean(class_ids(out16, False) == ref) > 0.98


def test_cuda_event_phases_add_up(tiny_checkpoint):
    r = TorchRunner(tiny_checkpoint, device="cuda")
    x = _batch(n=4)
    for _ in range(3):
        r.infer(x)
    phases = r.infer_phases(x)
    assert phases is not None and set(phases) == {"h2d", "compute", "d2h"}
    assert all(v > 0 for v in phases.values()), phases
    assert phases["compute"] < 1000.0
    assert TorchRunner(tiny_checkpoint, device="cpu").infer_phases(x) is None


def test_bench_on_cuda_reports_the_device_and_gpu_phases(tiny_checkpoint, tmp_path):
    for precision in ("fp32", "fp16"):
        report = tmp_path / f"bench-{precision}.json"
        r = runner.invoke(app, ["bench", "--backend", "torch", "--model", str(tiny_checkpoint), "--device", "cuda",
                                "--precision", precision, "--warmup", "3", "--iters", "10", "--json", str(report)])
        assert r.exit_code == 0, r.output
        data = json.loads(report.read_text())
        assert data["device"].startswith("cuda") and data["precision"] == precision
        assert len(data["samples_ms"]) == 10 and min(data["samples_ms"]) > 0, data
        assert {"h2d", "compute", "d2h"} <= set(data["phases"]), data["phases"]


def test_predict_on_cuda_matches_predict_on_the_cpu(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(90, 160), (128, 128), (200, 120)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    masks = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        r = runner.invoke(app, ["predict", str(photos), "--checkpoint", str(tiny_checkpoint), "--device", device,
                                "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert f"on {device}" in r.output
        masks[device] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.mask.png"))}
    assert sorted(masks["cpu"]) == sorted(masks["cuda"]) and len(masks["cpu"]) == 3
    for name, mask in masks["cpu"].items():
        assert mask.shape == masks["cuda"][name].shape
        assert np.mean(mask == masks["cuda"][name]) > 0.99, name


def test_compare_runs_the_cuda_rows(tiny_checkpoint, tiny_data, tmp_path):
    report = tmp_path / "compare.json"
    r = runner.invoke(app, ["compare", "--checkpoint", str(tiny_checkpoint), "--data", str(tiny_data),
                            "--artifacts", str(tmp_path / "artifacts"), "--report", str(tmp_path / "report"),
                            "--warmup", "2", "--iters", "5", "--json", str(report)])
    assert r.exit_code == 0, r.output
    rows = {(x["backend"], x["precision"], x["device"]): x for x in json.loads(report.read_text())["rows"]}
    for key in [("torch", "fp32", "cuda"), ("torch", "fp16", "cuda")]:
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["pixel_agreement"] > 0.98 and row["p50_ms"] > 0, row
    assert Path(tmp_path / "report" / "report.html").is_file()
