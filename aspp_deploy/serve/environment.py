"""The Python environment the Triton service model runs in (``aspp-deploy triton-env``): a virtual
environment with NumPy 1.x and this environment's ONNX Runtime and Pillow versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, List

from aspp_deploy.errors import InputError
from aspp_deploy.export.manifest import tool_versions

ENV_MARKER = ".aspp-triton-env"


def env_requirements() -> List[str]:
    """What the service's Python environment needs: NumPy 1.x (the Python backend stub of nvidia-pytriton
    and of Triton containers before 25.x is built for it), and this environment's ONNX Runtime and Pillow
    versions, so the server computes what `aspp-deploy predict` computes here."""
    versions = tool_versions("pillow")
    ort, pillow = versions.get("onnxruntime"), versions.get("pillow")
    return ["numpy<2", f"onnxruntime=={ort}" if ort else "onnxruntime", f"pillow=={pillow}" if pillow else "pillow"]


def make_env(folder: Path, log: Callable[[str], None] = lambda m: None) -> List[str]:
    """A virtual environment at ``folder`` for the service model (made in place: a venv cannot move)."""
    if folder.exists() and any(folder.iterdir()) and not (folder / ENV_MARKER).is_file():
        raise InputError(f"{folder} exists and is not an environment made by `aspp-deploy triton-env`: choose "
                         "another folder (it is never overwritten)")
    requirements = env_requirements()
    made_here = not folder.exists()
    try:
        log(f"creating a virtual environment at {folder} ({sys.version.split()[0]})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True, capture_output=True,
                       text=True, timeout=300)
        log(f"installing {' '.join(requirements)}")
        subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *requirements], check=True, capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        if made_here:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        last = ((exc.stderr or "").strip().splitlines() or ["?"])[-1]
        raise InputError(f"could not make the environment at {folder}: {last}") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"making the environment at {folder} took too long (pip could not reach an index?)") from None
    (folder / ENV_MARKER).write_text(" ".join(requirements) + "\n")
    return requirements
