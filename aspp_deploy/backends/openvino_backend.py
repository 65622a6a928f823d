"""OpenVINO runner (CPU): reads the ONNX file directly (FP32, or the Q/DQ INT8 ONNX, which
OpenVINO runs with its INT8 kernels), no conversion step and no second artifact.

Settings, all recorded in ``RunnerInfo.extra`` as the compiled model reports them:

- ``INFERENCE_PRECISION_HINT`` pinned to ``f32``. OpenVINO's default on CPUs with AVX-512 BF16 or
  AMX is ``bf16``: a silent precision change (logits differ from the ONNX's) that was also 1.5x
  *slower* than ONNX Runtime FP32 on our 2-core AVX-512 machine. The INT8 parts of a Q/DQ model
  still run in INT8: the hint only governs the floating-point parts.
- ``INFERENCE_NUM_THREADS`` from the same ``threads`` option as the other backends (0: OpenVINO's
  default), one stream and the LATENCY hint: one request at a time, like every runner here.
- The compiled model is cached (``CACHE_DIR``): under ``$ASPP_DEPLOY_CACHE/openvino`` when that is
  set, else in ``openvino-cache/`` beside the artifact (or ``~/.cache/aspp-deploy/openvino`` when
  that folder is not writable). OpenVINO keys the blobs by model content and settings, so a
  changed model or setting never reuses a stale blob; ``extra["loaded_from_cache"]`` says
  whether this load was a cache hit.

OpenVINO is optional: ``pip install 'aspp-deploy[openvino]'`` (it depends on neither torch nor
ONNX Runtime, so it installs beside both without replacing either).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.errors import InputError, MissingDependencyError

OPENVINO_INSTALL_HINT = "OpenVINO is not installed: pip install 'aspp-deploy[openvino]'"
INFERENCE_PRECISION = "f32"
CACHE_FOLDER = "openvino-cache"


def import_openvino():
    """The ``openvino`` module, or MissingDependencyError with the install command."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(OPENVINO_INSTALL_HINT) from None
    return openvino


def openvino_unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    try:
        import_openvino()
    except MissingDependencyError as exc:
        return str(exc)
    return None


def cache_dir_for(artifact: Path) -> Path:
    """Where the compiled model of ``artifact`` is cached (see the module docstring)."""
    env = os.environ.get("ASPP_DEPLOY_CACHE")
    if env:
        return Path(env) / "openvino"
    beside = Path(artifact).resolve().parent
    if os.access(beside, os.W_OK):
        return beside / CACHE_FOLDER
    return Path.home() / ".cache" / "aspp-deploy" / "openvino"


def _prop(compiled, name: str):
    try:
        value = compiled.get_property(name)
    except Exception:  # a property this OpenVINO release does not report
        return None
    if hasattr(value, "get_type_name"):  # an element type (the precision hint): "f32", "bf16"
        return value.get_type_name()
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class OpenVinoRunner(Runner):
    def __init__(self, onnx_path: Path | str, device: str = "cpu", threads: int = 0, precision: str = "fp32",
                 cache_dir: Path | None = None, inference_precision: str = INFERENCE_PRECISION) -> None:
        ov = import_openvino()
        path = Path(onnx_path)
        if not path.is_file():
            raise InputError(f"ONNX model not found: {path}")
        if device != "cpu":
            raise InputError(f"the openvino backend runs on the CPU here, not {device!r}: use --device cpu")
        if threads < 0:
            raise InputError(f"--threads {threads} is impossible: use 0 (OpenVINO's default) or more")
        cache = Path(cache_dir) if cache_dir is not None else cache_dir_for(path)
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
                                     "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
        except OSError:
            cache = None  # type: ignore[assignment]  # no cache rather than no runner
        core = ov.Core()
        try:
            self.compiled = core.compile_model(str(path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable models
            from aspp_deploy.runtime.ov_segmenter import openvino_message

            raise InputError(f"OpenVINO cannot load {path}: {openvino_message(exc)}") from None
        self.request = self.compiled.create_infer_request()
        out_type = str(self.compiled.output(0).get_element_type())
        extra = {
            "openvino": ov.__version__ if hasattr(ov, "__version__") else ov.get_version(),
            "inference_precision": _prop(self.compiled, "INFERENCE_PRECISION_HINT"),
            "num_threads": _prop(self.compiled, "INFERENCE_NUM_THREADS"),
            "num_streams": _prop(self.compiled, "NUM_STREAMS"),
            "performance_hint": _prop(self.compiled, "PERFORMANCE_HINT"),
            "cache_dir": str(cache) if cache is not None else None,
            "loaded_from_cache": _prop(self.compiled, "LOADED_FROM_CACHE"),
        }
        self.info = RunnerInfo("openvino", precision, device, str(path),
                               outputs_class_ids=any(t in out_type for t in ("i32", "i64", "u8", "int", "u32")),
                               extra=extra)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch})
        # the request reuses its output buffer: copy before the next call overwrites it
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self.request = None  # type: ignore[assignment]
        self.compiled = None  # type: ignore[assignment]
