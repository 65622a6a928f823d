"""``OrtSegmenter(onnx).predict(image) -> class-id mask``: the runtime on ONNX Runtime, for a machine
without TensorRT (a CPU box, a Jetson before its engine is built, a laptop checking the bundle).

Same API as ``Segmenter`` (``predict``, ``predict_batch``, ``classes``, ``palette``, ``preprocess``,
``min_batch``/``max_batch``, ``infer_raw``), fed from the ONNX's own aspp-deploy manifest: embedded in
the file (read through ONNX Runtime's model metadata, so the ``onnx`` package is not needed), else the
``manifest.json`` beside it (a bundle's ``models/manifest.json``). ONNX Runtime is imported when an
``OrtSegmenter`` is made, never before; torch and onnx are never imported. Python 3.8 syntax.

Example::

    from aspp_deploy.runtime.ort_segmenter import OrtSegmenter

    with OrtSegmenter("models/model.onnx") as seg:
        mask = seg.predict("street.jpg")      # H x W uint8 class ids at the image's own size
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.images import ImageLike, load_rgb, postprocess, stack_inputs

METADATA_KEY = "aspp_deploy.manifest"  # the key ``aspp_deploy.export.manifest`` embeds the entry under
MANIFEST_NAME = "manifest.json"
ORT_INSTALL_HINT = "pip install onnxruntime (CPU; on a Jetson, the onnxruntime-gpu wheel for its JetPack)"
DEFAULT_DYNAMIC_BATCH = 4


def import_onnxruntime():
    """The ``onnxruntime`` module, or ``MissingDependencyError`` saying how to install it."""
    try:
        import onnxruntime  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise MissingDependencyError("ONNX Runtime is not installed: " + ORT_INSTALL_HINT) from None
    return onnxruntime


def onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def manifest_entry(onnx_path: Path, embedded: Optional[str]) -> Dict[str, Any]:
    """The manifest of an ONNX: ``embedded`` (the JSON its metadata holds), else its ``manifest.json`` entry."""
    if embedded:
        try:
            entry = json.loads(embedded)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            return entry
    entry = _sidecar_entry(onnx_path)
    if entry is None:
        raise InputError("{} has no aspp-deploy manifest (embedded or in {} beside it): make it with "
                         "`aspp-deploy export` or `aspp-deploy import`".format(onnx_path, MANIFEST_NAME))
    return entry


def _sidecar_entry(onnx_path: Path) -> Optional[Dict[str, Any]]:
    path = onnx_path.parent / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError("{} is not valid JSON: {}".format(path, exc)) from None
    entry = (data.get("artifacts") or {}).get(onnx_path.name) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else None


class CpuSegmenter:
    """What the CPU runtimes share: the manifest's preprocessing, batching and post-processing around
    ``infer_raw`` (a subclass opens the engine and sets the fields listed here)."""

    backend = ""
    onnx_path: Path
    manifest: Dict[str, Any]
    input_name: str
    output_name: str
    min_batch: int
    max_batch: int
    outputs_class_ids: bool

    def _setup(self, manifest: Dict[str, Any], first_dim: Any) -> None:
        """Preprocessing, classes, palette and the batch range, from the manifest and the input's first dim."""
        self.manifest = manifest
        try:
            self.preprocess = Preprocess.from_dict(self.manifest["preprocess"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("{}'s manifest has no usable preprocessing record ({}): export it with "
                             "`aspp-deploy export`".format(self.onnx_path, exc)) from None
        self.classes = [str(c) for c in self.manifest.get("classes") or []]  # type: List[str]
        self.palette = [list(c) for c in self.manifest.get("palette") or []]  # type: List[List[int]]
        if isinstance(first_dim, int) and first_dim > 0:
            self.min_batch = self.max_batch = int(first_dim)
        else:
            self.min_batch, self.max_batch = 1, DEFAULT_DYNAMIC_BATCH

    def infer_raw(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, image: ImageLike) -> np.ndarray:
        """One image (path, PIL image or H x W x 3 RGB uint8 array) -> H x W class ids at its own size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageLike]) -> List[np.ndarray]:
        """Several images -> one mask each, run in batches of at most ``max_batch``."""
        rgb = [load_rgb(image) for image in images]
        masks = []  # type: List[np.ndarray]
        classes = len(self.classes) or None
        for start in range(0, len(rgb), self.max_batch):
            chunk = rgb[start:start + self.max_batch]
            x = stack_inputs([self.preprocess(image) for image in chunk], max(self.min_batch, len(chunk)))
            result = self.infer_raw(x)
            masks.extend(postprocess(result[i], image.size, classes, self.preprocess) for i, image in enumerate(chunk))
        return masks

    def close(self) -> None:
        pass

    def __enter__(self) -> "CpuSegmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class OrtSegmenter(CpuSegmenter):
    """An aspp-deploy ONNX on ONNX Runtime, with its preprocessing and post-processing."""

    backend = "onnxruntime"
    session: Any  # an onnxruntime.InferenceSession; None once closed

    def __init__(self, onnx: Path | str, threads: int = 0, providers: Optional[List[str]] = None) -> None:
        self.onnx_path = Path(onnx)
        if not self.onnx_path.is_file():
            raise InputError("ONNX model not found: {}".format(self.onnx_path))
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.providers = list(providers or ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own types for unreadable models
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError("ONNX Runtime cannot load {}: {}".format(self.onnx_path, first)) from None
        self.version = str(ort.__version__)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise InputError("{} has inputs {} and outputs {}: a segmentation model has one image input and an "
                             "output".format(self.onnx_path, [i.name for i in inputs], [o.name for o in outputs]))
        self._setup(self._manifest(), inputs[0].shape[0] if inputs[0].shape else 1)
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.outputs_class_ids = "int" in outputs[0].type

    def _manifest(self) -> Dict[str, Any]:
        meta = self.session.get_modelmeta().custom_metadata_map or {}
        return manifest_entry(self.onnx_path, meta.get(METADATA_KEY))

    @property
    def description(self) -> str:
        """Which engine runs the model, for the user: ``ONNX Runtime 1.x (CPUExecutionProvider): models/model.onnx``."""
        return "ONNX Runtime {} ({}): {}".format(self.version, ", ".join(self.session.get_providers()),
                                                 self.onnx_path)

    def infer_raw(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed float32 batch in the model's layout -> the model's raw output (logits or class ids)."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return np.asarray(self.session.run([self.output_name], feed)[0])

    def close(self) -> None:
        self.session = None
