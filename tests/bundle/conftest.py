"""Fixtures: one Jetson bundle made through the CLI from the tiny checkpoint (FP16 and INT8 with the fast
ONNX Runtime / onnxconverter quantizers), and clean virtual environments holding only NumPy and Pillow."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL
import pytest
from typer.testing import CliRunner

from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder

PIP_TIMEOUT_S = 240


def run_cli(*args: str):
    from aspp_deploy.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory) -> Path:
    return write_calibration_folder(tmp_path_factory.mktemp("bundle-calib"), 8, cfg=SynthConfig(size=96))


@pytest.fixture(scope="session")
def made_bundle(tmp_path_factory, tiny_checkpoint, tiny_data, calib_images):
    """``aspp-deploy bundle --precision fp16,int8`` on the tiny checkpoint, made once."""
    root = tmp_path_factory.mktemp("bundle")
    out = root / "jetson"
    result = run_cli("bundle", "--checkpoint", tiny_checkpoint, "--artifacts", root / "artifacts",
                     "--calib", calib_images, "--data", tiny_data, "--backend", "ort",
                     "--precision", "fp16,int8", "--out", out, "--json", root / "bundle.json")
    assert result.exit_code == 0, result.output
    return SimpleNamespace(out=out, root=root, artifacts=root / "artifacts", json=root / "bundle.json",
                           output=result.output)


def _make_venv(folder: Path, python: str, packages: list[str]) -> Path:
    """A virtual environment from ``python`` with only ``packages`` (skips when pip cannot get them)."""
    made = subprocess.run([python, "-m", "venv", str(folder)], capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"{python} cannot make a virtual environment: {(made.stderr.strip().splitlines() or ['?'])[-1]}")
    py = folder / "bin" / "python"
    try:
        proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                              capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip could not install {packages} within {PIP_TIMEOUT_S} s (no package index reachable?)")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"pip could not install {packages} into a clean venv: {last}")
    return py


def _base_python() -> str:
    """The interpreter this test session's venv was made from (a venv made from a venv's python is clean too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _python38() -> str | None:
    """A working Python 3.8 (JetPack 5's Python) if this machine has one: under pyenv or on PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", "3.8.*", "bin", "python3.8")), reverse=True)
    for candidate in [*candidates, shutil.which("python3.8")]:
        if candidate and subprocess.run([candidate, "-c", "import venv"], capture_output=True).returncode == 0:
            return candidate  # a pyenv shim for a version that is not selected fails here
    return None


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory) -> Path:
    """Python 3.11-like venv with the toolkit's own NumPy and Pillow releases and nothing else."""
    return _make_venv(tmp_path_factory.mktemp("venv-clean") / "venv", _base_python(),
                      [f"numpy=={np.__version__}", f"pillow=={PIL.__version__}"])


@pytest.fixture(scope="session")
def python38(tmp_path_factory) -> Path:
    """Python 3.8 venv (as on JetPack 5) with whatever NumPy and Pillow releases support it."""
    base = _python38()
    if base is None:
        pytest.skip("no Python 3.8 on this machine (JetPack 5's Python): the 3.8 check needs one")
    return _make_venv(tmp_path_factory.mktemp("venv-py38") / "venv", base, ["numpy", "pillow"])
