"""Hostile-input suite: the real CLI (typer's CliRunner, or a subprocess where a process must be
killed) on tiny models. Every refusal must be one ``error:`` line, a non-zero exit, no traceback,
and nothing written outside the output folder or left half-written in it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app



def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")) if Path(folder).exists() else []


def refused(result, fragment: str = "", code: int = 1) -> str:
    """Assert a clean refusal; returns the error line."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback (most recent call last)" not in out and "error: unexpected " not in out, out
    # the exception, if any, is the SystemExit typer uses for the exit code: nothing escaped
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert fragment in errors[0], out
    return errors[0]


@pytest.fixture
def artifacts(tmp_path, exported) -> Path:
    """A private copy of the shared exported model's folder (model.onnx + manifest.json)."""
    folder = tmp_path / "artifacts"
    shutil.copytree(exported.parent, folder)
    return folder


@pytest.fixture
def data_copy(tmp_path, tiny_data) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(tiny_data, folder)
    return folder
