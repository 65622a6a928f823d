"""Shared fixtures: a tiny synthetic VOC dataset and a tiny (briefly trained) checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.synthetic import CLASSES, SynthConfig, write_synthetic_voc
from aspp_deploy.data.voc import voc_palette
from aspp_deploy.model.checkpoint import Checkpoint
from aspp_deploy.model.deeplab import ModelConfig, build_model

TINY = ModelConfig(num_classes=len(CLASSES), backbone="resnet18", aspp_depth=16)
TINY_SIZE = 128


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_voc(root, {"train": 8, "val": 4}, seed=0, cfg=SynthConfig(size=TINY_SIZE))


def make_checkpoint(path: Path, config: ModelConfig = TINY, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(config).eval()
    # Give BN non-trivial statistics so exported graphs are not degenerate.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    n = config.num_classes
    Checkpoint(config, Preprocess(TINY_SIZE, TINY_SIZE), list(CLASSES[:n]),
               [list(c) for c in voc_palette(n)], model.state_dict(),
               {"note": "test fixture"}).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


EXPORT_SIZE = 64


def copy_model(onnx: Path, folder: Path) -> Path:
    """The files beside ``onnx`` (the model, its manifest, its pre-flight report) copied into ``folder``
    (made here); returns the copy of ``onnx``. For fixtures shared across tests: write only in a copy."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in onnx.parent.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    return folder / onnx.name


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint exported at 64x64 (model.onnx + manifest.json), made once: copy it before
    writing anything beside it."""
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

    out = tmp_path_factory.mktemp("exported")
    return onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(EXPORT_SIZE, EXPORT_SIZE)).onnx_path


@pytest.fixture(scope="session")
def fused_exported(tmp_path_factory, tiny_checkpoint) -> Path:
    """``exported`` with fused I/O (uint8 pixels in, uint8 class ids out), made once: copy it before
    writing anything beside it."""
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

    out = tmp_path_factory.mktemp("fused-exported")
    return onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(EXPORT_SIZE, EXPORT_SIZE, fused_io=True)).onnx_path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the default-data cache out of the user's home."""
    monkeypatch.setenv("ASPP_DEPLOY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_run(tmp_path_factory):
    """Tests kill servers with SIGKILL on purpose; Triton's Python-backend stubs outlive a killed server.
    At the end of the run, every tritonserver or stub still serving a repository under this run's
    temporary folder is killed, so a test run leaves no process behind."""
    yield
    import os
    import signal

    base = str(tmp_path_factory.getbasetemp())
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if base in cmdline and ("tritonserver" in cmdline or "triton_python_backend_stub" in cmdline):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
