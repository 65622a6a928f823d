"""ONNX Runtime: the one place an ``InferenceSession`` is built (the bundle's CPU runtime, the
``onnxruntime`` backend of eval/bench/compare/predict and the Triton service all open ONNX files here).

A session has full graph optimisation, quiet logs, ``threads`` intra-op threads (0: ONNX Runtime's
default) and, where asked, ``inter_op_threads``; ``providers`` default to the CPU. Python 3.8 syntax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from aspp_deploy.errors import InputError, MissingDependencyError, require
from aspp_deploy.runtime.engines.base import Engine, feed_array, first_line
from aspp_deploy.runtime.manifest import METADATA_KEY, ArtifactEntry, read_artifact_entry

ORT_INSTALL_HINT = "pip install onnxruntime (CPU; on a Jetson, the onnxruntime-gpu wheel for its JetPack)"
# The execution providers each ``device`` asks for, in ONNX Runtime's order of preference.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or ``MissingDependencyError`` saying how to install it."""
    return require("onnxruntime", ORT_INSTALL_HINT)


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def providers_for(device: str) -> List[str]:
    """The providers of ``device`` (cpu, cuda, tensorrt); MissingDependencyError when this ONNX Runtime lacks it."""
    if device not in PROVIDERS:
        raise InputError("unknown ONNX Runtime device {!r}; choose one of {}".format(device, sorted(PROVIDERS)))
    available = import_onnxruntime().get_available_providers()
    if PROVIDERS[device][0] not in available:
        raise MissingDependencyError("ONNX Runtime here has no {} (installed: {})".format(
            PROVIDERS[device][0], ", ".join(available)))
    return list(PROVIDERS[device])


def ort_session(path: Union[str, Path], threads: int = 0, providers: Optional[Sequence[str]] = None,
                inter_op_threads: int = 0, spinning: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``path``; one InputError when the file is missing or unreadable.

    ``spinning=False``: the intra-op threads sleep between runs instead of busy-waiting for the next one
    (ONNX Runtime's default keeps them spinning, which is fastest for back-to-back runs but takes the CPU
    from the decoding and preprocessing threads of a stream pipeline: +40% FPS measured without it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("ONNX model not found: {}".format(path))
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if inter_op_threads:
        opts.inter_op_num_threads = int(inter_op_threads)
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers or PROVIDERS["cpu"]))
    except Exception as exc:  # ORT raises its own types for unreadable models
        raise InputError("ONNX Runtime cannot load {}: {}".format(path, first_line(exc))) from None


class OrtEngine(Engine):
    """An ONNX file on ONNX Runtime."""

    kind = "onnxruntime"
    session: Any  # an onnxruntime.InferenceSession; None once closed

    def __init__(self, onnx: Union[str, Path], threads: int = 0, providers: Optional[Sequence[str]] = None,
                 inter_op_threads: int = 0, spinning: bool = True) -> None:
        self.path = Path(onnx)
        self.session = ort_session(self.path, threads, providers, inter_op_threads, spinning)
        self.version = str(import_onnxruntime().__version__)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in outputs]
        self.input_shape = list(inputs[0].shape or []) if inputs else []  # ints, names or None per axis
        first = self.input_shape[0] if self.input_shape else 1
        if isinstance(first, int) and first > 0:
            self.min_batch = self.max_batch = int(first)
        self.outputs_class_ids = bool(outputs) and "int" in outputs[0].type
        if inputs and inputs[0].type == "tensor(uint8)":
            self.input_dtype = "uint8"

    @property
    def providers(self) -> List[str]:
        return list(self.session.get_providers())

    @property
    def description(self) -> str:
        """``ONNX Runtime 1.x (CPUExecutionProvider): models/model.onnx``."""
        return "ONNX Runtime {} ({}): {}".format(self.version, ", ".join(self.providers), self.path)

    def manifest(self) -> ArtifactEntry:
        """The ONNX's verified aspp-deploy manifest: embedded (read through ONNX Runtime's model
        metadata, so the onnx package is not needed), else the ``manifest.json`` entry beside it."""
        meta = self.session.get_modelmeta().custom_metadata_map or {}  # type: Dict[str, str]
        return read_artifact_entry(self.path, meta.get(METADATA_KEY))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: feed_array(batch)}
        try:
            return np.asarray(self.session.run([self.output_name], feed)[0])
        except Exception as exc:  # InvalidArgument & co: the input does not fit the graph
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            expected = [d if isinstance(d, int) else "?" for d in self.input_shape]
            raise InputError("{} takes input {}, was given {} {} from its manifest's preprocessing: the file and its "
                             "manifest disagree (export it again) [{}]".format(
                                 self.path, expected, list(batch.shape), batch.dtype, first_line(exc)[:200])) from None

    def close(self) -> None:
        self.session = None
