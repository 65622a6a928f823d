"""Checks every command's arguments get before any work (``check_arguments``), and the output-path
checks commands call on their own options."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from aspp_deploy.errors import InputError
from aspp_deploy.io import refuse_unsafe_destination


# cpu, cuda, cuda:N (PyTorch, ONNX Runtime), tensorrt (ONNX Runtime's TensorRT provider), auto (train)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|tensorrt)$")
# Options naming an output folder (checked like --json, but as folders).
_OUTPUT_FOLDERS = ("report", "cache_dir")


def check_arguments(kwargs: dict) -> None:
    """Refuse, before any work, what no command can use: a negative count or size, a NaN or infinite
    or negative number, an unknown device, a --json path that is a folder or lies under a file, an
    output folder that is a file or cannot be created. Each command still checks its own ranges."""
    flags = _option_flags()
    for name, value in kwargs.items():
        flag = flags.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{flag} {value} is impossible: it must be a finite number")
        if isinstance(value, (int, float)) and value < 0:
            raise InputError(f"{flag} {value} is impossible: it must be 0 or more")
        if name == "device" and isinstance(value, str) and not _DEVICE.match(value):
            raise InputError(f"{flag} {value!r} is not a device: use cpu, cuda or cuda:N")
        if name == "json_out" and isinstance(value, Path):
            check_output_file(value, flag)
        if name in _OUTPUT_FOLDERS and isinstance(value, Path):
            check_output_folder(value, flag)


def _option_flags() -> dict:
    """Parameter name -> the option as typed (``json_out`` -> ``--json``), from the running command."""
    try:  # typer >= 0.20 carries its own click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context  # pyright: ignore[reportMissingImports]
    try:
        ctx = get_current_context(silent=True)
    except Exception:  # a typer without it: fall back to the parameter names
        ctx = None
    if ctx is None or not hasattr(ctx, "command"):
        return {}
    return {p.name: (max(p.opts, key=len) if p.opts else p.name) for p in ctx.command.params}


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_can_create_under(path: Path, flag: str, start: Path | None = None) -> None:
    base = _nearest_existing(start if start is not None else path)
    if not base.is_dir():
        raise InputError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {base} (permission denied)")


def check_output_file(path: Path, flag: str) -> None:
    """One InputError unless a file can be written at ``path`` (not a folder, not under a file)."""
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{flag} {path} is a folder: give a file name")
    refuse_unsafe_destination(path, label=flag)  # a link, device, FIFO or socket is never replaced
    _check_can_create_under(path, flag, start=path.parent)


def check_output_folder(path: Path, flag: str) -> None:
    """One InputError unless ``path`` is a folder or one can be made there."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder")
    _check_can_create_under(path, flag)


def check_writable(out: Path) -> None:
    """InputError unless ``out`` could be created (checked on its nearest existing ancestor; creates nothing)."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "not a folder" if not folder.is_dir() else "permission denied"
        raise InputError(f"cannot write to {out.parent}: {folder} is {why}" if folder != out.parent
                         else f"cannot write to {out.parent}: {why}")
