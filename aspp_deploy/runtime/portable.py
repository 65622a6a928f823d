"""What the portable runtime is made of, as files: the ``runtime`` package whole (the portable core)
and what it runs with, so that a Jetson bundle or a Triton service can ship it beside itself.

* ``runtime/`` whole: the core (manifest, preprocessing, images, engines, Segmenter, the device
  build, the calibration feeder an on-device legacy INT8 build uses) and TensorRT's build and run
  (``runtime/trt/``);
* the package's ``__init__``, ``errors`` and ``io``.

Every one of these files parses as Python 3.8 and imports neither torch nor onnx (tests check it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from aspp_deploy.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1]  # aspp_deploy/
RUNTIME_PACKAGES = ("runtime",)
RUNTIME_MODULES = ("__init__.py", "errors.py", "io.py")


def runtime_files() -> List[Path]:
    """The package files the runtime ships, relative to ``aspp_deploy/``."""
    found = []  # type: List[Path]
    for package in RUNTIME_PACKAGES:
        files = sorted(p for p in (PACKAGE / package).rglob("*.py") if "__pycache__" not in p.parts)
        if not files:
            raise InputError("aspp_deploy/{} is missing from this installation: reinstall aspp-deploy".format(package))
        found += [f.relative_to(PACKAGE) for f in files]
    for module in RUNTIME_MODULES:
        if not (PACKAGE / module).is_file():
            raise InputError("aspp_deploy/{} is missing from this installation: reinstall aspp-deploy".format(module))
        found.append(Path(module))
    return found


def copy_runtime(root: Path) -> None:
    """The portable runtime (``runtime_files``) into ``root/aspp_deploy/``."""
    for rel in runtime_files():
        dst = Path(root) / "aspp_deploy" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE / rel, dst)
