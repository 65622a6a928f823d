"""Shared fixtures: a tiny synthetic VOC dataset and a tiny (briefly trained) checkpoint."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.synthetic import CLASSES, SynthConfig, write_synthetic_voc
from aspp_deploy.data.voc import voc_palette
from aspp_deploy.model.checkpoint import Checkpoint
from aspp_deploy.model.deeplab import ModelConfig, build_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share CI's two cores: PyTorch runs one thread in each (and in the processes they start),
    # instead of two threads per worker contending for the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

TINY = ModelConfig(num_classes=len(CLASSES), backbone="resnet18", aspp_depth=16)
TINY_SIZE = 128


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> Path:
    """The folder ``name`` filled by ``make(folder)`` once per test run. Under pytest-xdist (README's test
    command runs two workers) it lies in the run's folder shared by the workers: the first worker that
    needs it makes it while the others wait on a lock, then every worker reads the same folder. A
    ``make`` that fails or skips leaves nothing marked made, so the next worker tries again."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent
    folder, made = root / name, root / f"{name}.made"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            made.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny synthetic VOC split (read only), one per run: the same path in every xdist worker, so that
    what one worker made from it (``tiny_compare``) is what another would have made."""
    return made_once(tmp_path_factory, "synth",
                     lambda root: write_synthetic_voc(root, {"train": 8, "val": 4}, seed=0,
                                                      cfg=SynthConfig(size=TINY_SIZE)))


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
    """The tiny checkpoint (read only), one per run: the same path in every xdist worker (see tiny_data)."""
    return made_once(tmp_path_factory, "ckpt", lambda folder: make_checkpoint(folder / "tiny.pt")) / "tiny.pt"


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


@pytest.fixture(scope="session")
def tiny_compare(tiny_checkpoint, tiny_data, tmp_path_factory):
    """One `compare` of the tiny checkpoint on the tiny split, made once per run, end to end (export, FP16
    and both INT8 variants, every row that runs here, 3 latency rounds of 3 calls), as on a machine
    without OpenVINO. Returns (result: exit_code and output, folder, report, json); its artifacts are
    ``folder / "a"``. Tests that only read its output use it as it is; tests that run compare again
    start from a copy (``compared_artifacts``), so each does not quantize the same model again."""
    from typer.testing import CliRunner

    import aspp_deploy.backends.registry as registry
    from aspp_deploy.backends.openvino_backend import OPENVINO_INSTALL_HINT
    from aspp_deploy.cli import app

    def make(folder: Path) -> None:
        with pytest.MonkeyPatch.context() as m:
            m.setenv("ASPP_DEPLOY_CACHE", str(folder / "cache"))
            # as on a machine without OpenVINO: the reason's "[openvino]" must survive the console's markup
            m.setattr(registry, "openvino_unavailable_reason", lambda: OPENVINO_INSTALL_HINT)
            r = CliRunner().invoke(app, ["compare", "--checkpoint", str(tiny_checkpoint), "--artifacts",
                                         str(folder / "a"), "--data", str(tiny_data), "--rounds", "3", "--iters", "3",
                                         "--warmup", "1", "--report", str(folder / "rep"), "--json",
                                         str(folder / "c.json")])
        (folder / "result.json").write_text(json.dumps({"exit_code": r.exit_code, "output": r.output}))

    folder = made_once(tmp_path_factory, "compared", make)
    result = SimpleNamespace(**json.loads((folder / "result.json").read_text()))
    return result, folder, folder / "rep", folder / "c.json"


@pytest.fixture
def compared_artifacts(tiny_compare):
    """``copy(folder)``: ``tiny_compare``'s artifact folder copied to ``folder`` without its result cache
    (the models, their manifest, pre-flight reports and calibration cache), which compare then reuses
    for the tiny checkpoint on the tiny split, as it would its own from an earlier run."""
    result, folder, _, _ = tiny_compare
    assert result.exit_code == 0, result.output

    def copy(dest: Path) -> Path:
        shutil.copytree(folder / "a", dest, ignore=shutil.ignore_patterns("result-cache"))
        return dest
    return copy


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
