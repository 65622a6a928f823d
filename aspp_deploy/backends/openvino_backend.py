"""OpenVINO runner (CPU): reads the ONNX file directly (FP32, or the Q/DQ INT8 ONNX, which
OpenVINO runs with its INT8 kernels), no conversion step and no second artifact.

The runtime's ``OvEngine`` compiles it (``aspp_deploy.runtime.engines.ov_engine``: the one compile
configuration). Settings, all recorded in ``RunnerInfo.extra`` as the compiled model reports them:

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
from aspp_deploy.errors import InputError, MissingDependencyError, require
from aspp_deploy.runtime.engines.ov_engine import INFERENCE_PRECISION, OvEngine

OPENVINO_INSTALL_HINT = "pip install 'aspp-deploy[openvino]' (OpenVINO for x86-64 and ARM64 CPUs)"
CACHE_FOLDER = "openvino-cache"


def import_openvino():
    """The ``openvino`` module, or MissingDependencyError with the install command."""
    return require("openvino", OPENVINO_INSTALL_HINT)


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


class OpenVinoRunner(Runner):
    """The runtime's ``OvEngine`` (the one compile configuration) behind the common interface."""

    def __init__(self, onnx_path: Path | str, device: str = "cpu", threads: int = 0, precision: str = "fp32",
                 cache_dir: Path | None = None, inference_precision: str = INFERENCE_PRECISION) -> None:
        import_openvino()  # the toolkit's install hint, not the bare runtime's
        path = Path(onnx_path)
        if not path.is_file():
            raise InputError(f"ONNX model not found: {path}")
        if device != "cpu":
            raise InputError(f"the openvino backend runs on the CPU here, not {device!r}: use --device cpu")
        self.engine = OvEngine(path, threads=threads, cache_dir=Path(cache_dir) if cache_dir is not None
                               else cache_dir_for(path), inference_precision=inference_precision)
        self.compiled, self.request = self.engine.compiled, self.engine.request
        prop = self.engine.get_property
        extra = {
            "openvino": self.engine.version,
            "inference_precision": prop("INFERENCE_PRECISION_HINT"),
            "num_threads": prop("INFERENCE_NUM_THREADS"),
            "num_streams": prop("NUM_STREAMS"),
            "performance_hint": prop("PERFORMANCE_HINT"),
            "cache_dir": self.engine.config.get("CACHE_DIR"),
            "loaded_from_cache": prop("LOADED_FROM_CACHE"),
        }
        self.info = RunnerInfo("openvino", precision, device, str(path),
                               outputs_class_ids=self.engine.outputs_class_ids, extra=extra,
                               input_dtype=self.engine.input_dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(batch)

    def close(self) -> None:
        self.engine.close()
        self.request = None  # type: ignore[assignment]
        self.compiled = None  # type: ignore[assignment]
