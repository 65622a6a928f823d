"""Fixtures for the serving tests: a real tritonserver (nvidia-pytriton's, or one on PATH), the service's
Python environment made by `aspp-deploy triton-env`, the tiny model exported with a dynamic batch, and
a repository written by `aspp-deploy triton`. Every server listens on 127.0.0.1 only and is stopped by
the fixture that started it."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
from aspp_deploy.errors import AsppDeployError
from tests.conftest import made_once

READY_TIMEOUT_S = 120


def run_cli(*args):
    from aspp_deploy.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _temporary_files_stay_in_the_runs_folder(tmp_path_factory, monkeypatch):
    """`aspp-deploy serve` without --log keeps its server log in the temporary folder for the user to read
    after a failure: the serve tests' own subprocesses put theirs in this run's folder (which pytest
    removes), not in /tmp, where every run left a dozen."""
    folder = tmp_path_factory.getbasetemp() / "tmp"
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(folder))


@pytest.fixture(scope="session")
def triton_binary():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient (the serve extra) is not installed")
    pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the serve extra) is not installed")
    from aspp_deploy.serve.server import find_server

    try:
        return find_server()
    except AsppDeployError as exc:
        pytest.skip(f"no tritonserver here: {exc}")


@pytest.fixture(scope="session")
def triton_env(tmp_path_factory, triton_binary) -> Path:
    """The service model's Python environment (ASPP_TRITON_ENV, else made once by `aspp-deploy triton-env`)."""
    given = os.environ.get("ASPP_TRITON_ENV")
    if given:
        return Path(given)

    def make(folder: Path) -> None:
        result = run_cli("triton-env", folder / "env")
        if result.exit_code != 0 and "could not make" in result.output:
            pytest.skip(f"pip could not make the service environment: {result.output.strip()}")
        assert result.exit_code == 0, result.output

    return made_once(tmp_path_factory, "triton-env", make) / "env"


@pytest.fixture(scope="session")
def served_model(tmp_path_factory, tiny_checkpoint):
    """The tiny model exported with a dynamic batch, and a few images of other sizes than the model's."""
    root = tmp_path_factory.mktemp("serve-model")
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--out", root, "--dynamic", "batch")
    assert result.exit_code == 0, result.output
    images = write_calibration_folder(root / "images", 4, cfg=SynthConfig(size=96))
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(150, 100), (77, 130), (128, 128)]):  # other sizes and aspect ratios, lossless
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"odd_{i}.png")
    return SimpleNamespace(onnx=root / "model.onnx", images=images, root=root)


def write_repo(out: Path, served_model, env: Path, *extra) -> Path:
    result = run_cli("triton", out, "--onnx", served_model.onnx, "--python-env", env, "--threads", "1", *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def repo(tmp_path_factory, served_model, triton_env) -> Path:
    return write_repo(tmp_path_factory.mktemp("triton") / "repo", served_model, triton_env, "--unbatched-twin",
                      "--max-image-pixels", "160000", "--preferred-batch", "2,4", "--version-policy", "latest:1")


def start_server(repo: Path, binary):
    from aspp_deploy.serve.server import TritonServer, free_port

    server = TritonServer(repo, binary, "127.0.0.1", free_port(), free_port(), free_port())
    server.start()
    try:
        server.models_ready = server.wait_ready(READY_TIMEOUT_S)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(repo, triton_binary):
    s = start_server(repo, triton_binary)
    yield s
    s.stop()
