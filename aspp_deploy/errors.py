"""Typed errors. The CLI turns every ``AsppDeployError`` into one line on stderr and exit code 1."""


class AsppDeployError(Exception):
    """Base of every error the user can cause (bad input, missing dependency)."""


class InputError(AsppDeployError):
    """A file or folder given by the user is missing, unreadable or malformed."""


class CheckpointError(InputError):
    """A checkpoint is missing, corrupt or does not fit the requested architecture."""


class DatasetError(InputError):
    """A dataset or image folder is empty or malformed."""


class MissingDependencyError(AsppDeployError):
    """An optional dependency (TensorRT, a CUDA device, ...) is not available."""


class ParityError(AsppDeployError):
    """An artifact disagrees with its source model beyond the tolerance."""


class ServeFailure(AsppDeployError):
    """A served model, or the server, stopped serving after it was ready."""


def require(module: str, install_hint: str):
    """``import module`` or MissingDependencyError with ``install_hint`` (what to install, and why).

    The one way an optional third-party package is imported where it is needed::

        ort = require("onnxruntime", "pip install onnxruntime (or aspp-deploy[gpu] for CUDA)")
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        detail = "" if missing == module else f" ({missing} is missing)"
        raise MissingDependencyError(f"{module} is not installed{detail}: {install_hint}") from None
