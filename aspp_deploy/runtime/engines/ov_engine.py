"""OpenVINO (CPU plugin): the one compile configuration, for the bundle's CPU runtime and the
``openvino`` backend alike. It reads the ONNX directly (FP32, or the Q/DQ INT8 ONNX, which OpenVINO
runs with its INT8 kernels).

* ``INFERENCE_PRECISION_HINT`` ``f32``: OpenVINO's default on CPUs with AVX-512 BF16 or AMX is
  ``bf16``, a silent precision change (and slower than ONNX Runtime FP32 where we measured it); the
  INT8 parts of a Q/DQ model still run in INT8.
* One stream and the LATENCY hint (one request at a time); ``threads`` inference threads (0: OpenVINO's default).
* ``cache_dir``: where OpenVINO caches the compiled model (keyed by model content and settings), when given.

Python 3.8 syntax; OpenVINO is imported when an engine is made.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from aspp_deploy.errors import InputError, require
from aspp_deploy.runtime.engines.base import Engine, feed_array
from aspp_deploy.runtime.manifest import METADATA_KEY, ArtifactEntry, read_artifact_entry

OPENVINO_INSTALL_HINT = "pip install openvino (x86-64 and ARM64 CPUs), or aspp-deploy[openvino]"
INFERENCE_PRECISION = "f32"

# The lines of an OpenVINO error that only say where in OpenVINO's sources it was raised
_OV_WHERE = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?|Summary:)$")


def import_openvino() -> Any:
    """The ``openvino`` module, or MissingDependencyError with the install command."""
    return require("openvino", OPENVINO_INSTALL_HINT)


@functools.lru_cache(maxsize=None)  # never evicted: a Core must not die
def shared_core(ov: Any) -> Any:
    """The process's one ``openvino.Core``, made on first use and never destroyed. One Core per engine
    is not only wasteful: OpenVINO's CPU plugin installs its own signal stack when a Core first compiles
    and puts back the one it found when that Core dies, so Cores that die out of order leave the main
    thread on a freed signal stack, and the next signal (Ctrl-C) crashes the process."""
    return ov.Core()


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_message(exc: BaseException, limit: int = 400) -> str:
    """OpenVINO's multi-line error -> one line that says what is wrong. Its messages start with a chain
    of source locations (``Exception from src/inference/src/cpp/core.cpp:132:``, ``Check 'false'
    failed at ...:151:``), one per layer the error went through; those are dropped and the lines
    that explain (``No conversion rule found for operations: FooBar-17``, ``Unable to read the model:
    ...``) are kept, joined."""
    lines = [line.strip().lstrip("-").strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not _OV_WHERE.match(line)) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def compile_config(threads: int = 0, cache_dir: Optional[Path] = None,
                   inference_precision: str = INFERENCE_PRECISION) -> Dict[str, Any]:
    """The compile configuration (see the module docstring); a cache folder that cannot be made is left out."""
    config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": "1"}  # type: Dict[str, Any]
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if cache_dir is not None:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        except OSError:
            pass  # no cache rather than no engine
    return config


class OvEngine(Engine):
    """An ONNX file compiled by OpenVINO for the CPU."""

    kind = "openvino"
    request: Any   # an openvino.InferRequest; None once closed
    compiled: Any

    def __init__(self, onnx: Union[str, Path], threads: int = 0, cache_dir: Optional[Path] = None,
                 inference_precision: str = INFERENCE_PRECISION) -> None:
        self.path = Path(onnx)
        if not self.path.is_file():
            raise InputError("ONNX model not found: {}".format(self.path))
        if threads < 0:
            raise InputError("--threads {} is impossible: use 0 (OpenVINO's default) or more".format(threads))
        ov = import_openvino()
        self.version = str(getattr(ov, "__version__", "") or ov.get_version())
        self.config = compile_config(threads, cache_dir, inference_precision)
        self.core = shared_core(ov)
        try:  # from the file, so that a cached compiled model loads without reading the ONNX
            self.compiled = self.core.compile_model(str(self.path), "CPU", self.config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable models
            raise InputError("OpenVINO cannot load {}: {}".format(self.path, openvino_message(exc))) from None
        self.request = self.compiled.create_infer_request()
        inputs, outputs = list(self.compiled.inputs), list(self.compiled.outputs)
        self.input_names = [_name(t, "input", i) for i, t in enumerate(inputs)]
        self.output_names = [_name(t, "output", i) for i, t in enumerate(outputs)]
        shape = inputs[0].get_partial_shape() if inputs else None
        if shape is not None and shape.rank.is_static and shape[0].is_static:
            self.min_batch = self.max_batch = int(shape[0].get_length())
        self.outputs_class_ids = bool(outputs) and not outputs[0].get_element_type().get_type_name().startswith(("f", "bf"))
        if inputs and inputs[0].get_element_type().get_type_name() == "u8":
            self.input_dtype = "uint8"

    def get_property(self, name: str) -> Any:
        """A property of the compiled model as OpenVINO reports it (None where this release has no such property)."""
        try:
            value = self.compiled.get_property(name)
        except Exception:  # a property this OpenVINO release does not report
            return None
        if hasattr(value, "get_type_name"):  # an element type (the precision hint): "f32", "bf16"
            return value.get_type_name()
        return value if isinstance(value, (bool, int, float, str)) else str(value)

    @property
    def description(self) -> str:
        return "OpenVINO {} (CPU, {} precision): {}".format(self.version, self.config["INFERENCE_PRECISION_HINT"],
                                                           self.path)

    def manifest(self) -> ArtifactEntry:
        """The ONNX's verified manifest: embedded (OpenVINO keeps ONNX metadata in the model's runtime
        info), else the ``manifest.json`` entry beside it."""
        try:
            model = self.core.read_model(str(self.path))
            embedded = str(model.get_rt_info(["framework", METADATA_KEY]).astype(str))  # type: Optional[str]
        except Exception:  # no such key (an ONNX without an embedded manifest), or an older OpenVINO API
            embedded = None
        return read_artifact_entry(self.path, embedded)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: feed_array(batch)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)  # the request reuses its buffer

    def close(self) -> None:
        self.request = None
        self.compiled = None


def _name(port: Any, what: str, index: int) -> str:
    try:
        return str(port.get_any_name())
    except Exception:  # an unnamed port
        return "{}{}".format(what, index)
