"""``OpenVinoSegmenter(onnx).predict(image) -> class-id mask``: the runtime on OpenVINO (CPU), the fastest
CPU engine we measured for our FP32 and cpu-target INT8 ONNX files (``benchmarks/bench_openvino.py``).

Same API as ``OrtSegmenter``. OpenVINO reads the ONNX directly; the floating-point precision is
pinned to f32 (OpenVINO's default on CPUs with BF16 or AMX is bf16: other logits, and slower here);
one stream, the LATENCY hint, ``threads`` intra-op threads (0: OpenVINO's choice); the compiled model
is cached in ``cache_dir`` when one is given (OpenVINO keys its blobs by model and settings; a
bundle's ``segment`` uses ``engines/openvino-cache``).
The manifest is the one embedded in the ONNX (OpenVINO keeps ONNX metadata in the model's runtime
info), else ``manifest.json`` beside it. OpenVINO is imported when a segmenter is made; torch, onnx
and ONNX Runtime are never imported. Python 3.8 syntax.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import numpy as np

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.ort_segmenter import METADATA_KEY, CpuSegmenter, manifest_entry

OPENVINO_INSTALL_HINT = "pip install openvino (x86-64 and ARM64 CPUs)"
INFERENCE_PRECISION = "f32"


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


# The lines of an OpenVINO error that only say where in OpenVINO's sources it was raised
_OV_WHERE = re.compile(r"^(Exception from \S+:\d+:?|Check '.*' failed at \S+:\d+:?|Summary:)$")


def openvino_message(exc: BaseException, limit: int = 400) -> str:
    """OpenVINO's multi-line error -> one line that says what is wrong. Its messages start with a chain
    of source locations (``Exception from src/inference/src/cpp/core.cpp:132:``, ``Check 'false'
    failed at ...:151:``), one per layer the error went through; those are dropped and the lines
    that explain (``No conversion rule found for operations: FooBar-17``, ``Unable to read the model:
    ...``) are kept, joined."""
    lines = [line.strip().lstrip("-").strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines if line and not _OV_WHERE.match(line)) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def _embedded(model: Any) -> Optional[str]:
    try:
        return str(model.get_rt_info(["framework", METADATA_KEY]).astype(str))
    except Exception:  # no such key (an ONNX without an embedded manifest), or an older OpenVINO API
        return None


class OpenVinoSegmenter(CpuSegmenter):
    """An aspp-deploy ONNX on OpenVINO's CPU plugin, with its preprocessing and post-processing."""

    backend = "openvino"
    request: Any  # an openvino.InferRequest; None once closed
    compiled: Any

    def __init__(self, onnx: Path | str, threads: int = 0, cache_dir: Optional[Path] = None) -> None:
        self.onnx_path = Path(onnx)
        if not self.onnx_path.is_file():
            raise InputError("ONNX model not found: {}".format(self.onnx_path))
        try:
            import openvino as ov  # pyright: ignore[reportMissingImports]
        except ImportError:
            raise MissingDependencyError("OpenVINO is not installed: " + OPENVINO_INSTALL_HINT) from None
        core = ov.Core()
        try:
            model = core.read_model(str(self.onnx_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable models
            raise InputError("OpenVINO cannot load {}: {}".format(self.onnx_path, openvino_message(exc))) from None
        if len(model.inputs) != 1 or not model.outputs:
            raise InputError("{} has {} inputs: a segmentation model has one image input".format(
                self.onnx_path, len(model.inputs)))
        shape = model.inputs[0].get_partial_shape()
        first = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None
        self._setup(manifest_entry(self.onnx_path, _embedded(model)), first)
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION, "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1"}  # type: dict
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            try:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(cache_dir)
            except OSError:
                pass  # no cache rather than no segmenter
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise InputError("OpenVINO cannot compile {}: {}".format(self.onnx_path, openvino_message(exc))) from None
        self.request = self.compiled.create_infer_request()
        self.version = str(getattr(ov, "__version__", "") or ov.get_version())
        self.input_name = model.inputs[0].get_any_name()
        self.output_name = model.outputs[0].get_any_name()
        self.outputs_class_ids = not model.outputs[0].get_element_type().get_type_name().startswith(("f", "bf"))

    @property
    def description(self) -> str:
        return "OpenVINO {} (CPU, f32 precision): {}".format(self.version, self.onnx_path)

    def infer_raw(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)  # the request reuses its buffer

    def close(self) -> None:
        self.request = None
        self.compiled = None
