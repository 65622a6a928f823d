"""Third-party segmentation models (torchvision, segmentation_models_pytorch) in the tests.

The package never imports torchvision or smp; only the "bring your own model" tests build their
models. On CI those tests run next to the CPU build of torch, while the torchvision wheels that
can be installed there are CUDA builds: their compiled extension (``torchvision/_C.so``) links
against ``libtorch_cuda.so`` and does not load. torchvision copes with that by design
(``torchvision.extension._has_ops()`` turns False and the compiled operators raise a clear
error when called), except for one thing: ``torchvision/_meta_registrations.py`` registers fake
(meta) kernels for ``torchvision::nms`` and ``torchvision::qnms`` unconditionally, and
``torch.library.register_fake`` fails with "operator torchvision::nms does not exist" when the
extension that defines those operators is absent. So ``import torchvision`` fails as a whole.

The fix here, used only when the extension really cannot be loaded: define the schemas of those
two operators (copied from torchvision's C++ ``TORCH_LIBRARY_FRAGMENT``) without any kernel, then
import torchvision normally. Nothing of torchvision is patched or skipped, torch is untouched
outside the ``torchvision`` operator namespace, the ops stay unusable (calling them raises
"Couldn't load custom C++ ops", as torchvision intends) and the pure-Python models -- all
the segmentation models use only aten operators -- work. When the extension does load (a
matching CPU torchvision), nothing is defined and the import is the ordinary one.

This is a test-only workaround: ``aspp_deploy`` must never import this module nor do the same;
users install a torchvision that matches their torch (docs/byom-install.md).

API:
    import_torchvision()  -> the torchvision module; skips the test (or module) if not installed
    import_smp()          -> segmentation_models_pytorch (imports torchvision first, as above)
    torchvision_ops_stubbed() -> True when the operator schemas above had to be defined
    fixtures ``torchvision_module`` and ``smp_module`` (session scope), for tests that prefer them
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Schemas of the torchvision operators whose fake kernels torchvision registers unconditionally
# (torchvision 0.2x: torchvision/_meta_registrations.py, ``@torch.library.register_fake``).
_UNCONDITIONAL_FAKE_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# The operator library that holds those schemas: it must stay alive for the whole session, since
# torch removes a ``torch.library.Library``'s registrations when the object is garbage-collected.
_schema_library: torch.library.Library | None = None

_INSTALL_HINT = ("the bring-your-own-model tests need torchvision and segmentation-models-pytorch; "
                 "see .ci/run for the install lines that keep the CPU torch")


def torchvision_ops_stubbed() -> bool:
    """Whether torchvision's compiled extension was missing and its op schemas had to be defined."""
    return _schema_library is not None


def _extension_loads(package_dir: Path) -> bool:
    """Try to load torchvision's ``_C`` the way torchvision does (``torch.ops.load_library``).

    Loading it here is harmless: ``import torchvision`` loads the same file first thing, and a
    second load of the same path is a no-op.
    """
    finder = importlib.machinery.FileFinder(
        str(package_dir),
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    spec = finder.find_spec("_C")
    if spec is None or spec.origin is None:
        return False
    try:
        torch.ops.load_library(spec.origin)
    except OSError:  # e.g. "libc10_cuda.so: cannot open shared object file" next to a CPU torch
        return False
    return True


def _op_defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_missing_schemas() -> None:
    global _schema_library
    missing = [name for name in _UNCONDITIONAL_FAKE_OPS if not _op_defined(name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_UNCONDITIONAL_FAKE_OPS[name])
    _schema_library = lib


def import_torchvision() -> ModuleType:
    """``import torchvision`` that also works with a CUDA torchvision wheel next to the CPU torch.

    Skips (the calling test, or the whole module when called at import time) if torchvision is
    not installed; an installed torchvision that still fails to import is an error, not a skip.
    """
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"torchvision is not installed ({_INSTALL_HINT})", allow_module_level=True)
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    if not _extension_loads(package_dir):
        _define_missing_schemas()
    try:
        return importlib.import_module("torchvision")
    except Exception as exc:  # noqa: BLE001 - re-raised with the context a CI log needs
        raise RuntimeError(
            f"torchvision is installed at {package_dir} but does not import next to torch "
            f"{torch.__version__} (compiled extension loads: {not torchvision_ops_stubbed()}): "
            f"{type(exc).__name__}: {exc}") from exc


def import_smp() -> ModuleType:
    """``import segmentation_models_pytorch``; skips if it is not installed.

    smp imports torchvision (its ResNet encoders are torchvision's), timm, huggingface_hub and
    safetensors at import time; a missing one of those is an install error, reported as such.
    """
    if "segmentation_models_pytorch" in sys.modules:
        return sys.modules["segmentation_models_pytorch"]
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        pytest.skip(f"segmentation-models-pytorch is not installed ({_INSTALL_HINT})",
                    allow_module_level=True)
    import_torchvision()
    try:
        return importlib.import_module("segmentation_models_pytorch")
    except ImportError as exc:
        raise RuntimeError(
            f"segmentation-models-pytorch is installed but one of its dependencies is not: {exc} "
            f"({_INSTALL_HINT})") from exc


@pytest.fixture(scope="session")
def torchvision_module() -> ModuleType:
    return import_torchvision()


@pytest.fixture(scope="session")
def smp_module() -> ModuleType:
    return import_smp()
