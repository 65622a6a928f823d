"""The segmentation service as a Triton Python-backend model (shipped as ``<model>/<version>/model.py``).

Requests carry either ``IMAGE`` (encoded JPEG/PNG/BMP/TIFF bytes, ``[batch, 1]`` BYTES) or ``RAW``
(``[batch, H, W, 3]`` RGB uint8); the response is ``MASK`` (``[batch, H, W]`` class ids at the
image's own size, uint8, or int32 for more than 256 classes). Preprocessing, the inverse geometry and
the class-id reduction are the toolkit's own (``aspp_deploy.runtime``'s ``Segmenter``, copied
beside this file), so the server returns what ``aspp-deploy predict``
returns for the same image and model.

Where the network runs is a config parameter, not code: ``EXECUTOR`` ``onnxruntime`` runs the
``model.onnx`` beside this file in-process on ONNX Runtime (a server without Triton's ONNX Runtime or
TensorRT backends); ``triton`` sends the preprocessed batch to ``TARGET_MODEL`` (an ``onnxruntime`` or
``tensorrt_plan`` model of the same repository) through business-logic scripting. Requests gathered by
the dynamic batcher run as one batch; a bad request gets its own error response and the others are
served. Each network run is counted on Triton's metrics port (``aspp_network_runs`` and
``aspp_network_images``, labelled with the model and version), so the batches that really run can be
seen. ``THREADS`` 0 gives each instance the server's cores divided among the model's instances.
NumPy, Pillow and (for the in-process executor) ONNX Runtime come from the Python environment the
config's ``EXECUTION_ENV_PATH`` names, or the server's own Python. Python 3.8 syntax.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path[:1]:  # the runtime copied beside this file wins over any installed aspp_deploy
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  # pyright: ignore[reportMissingImports]
from PIL import Image  # noqa: E402

from aspp_deploy.errors import AsppDeployError  # noqa: E402
from aspp_deploy.runtime.engines.base import Engine  # noqa: E402
from aspp_deploy.runtime.images import ImageDecodeError, decode_image  # noqa: E402
from aspp_deploy.runtime.manifest import ArtifactEntry  # noqa: E402
from aspp_deploy.runtime.segmenter import Segmenter  # noqa: E402

IMAGE, RAW, MASK = "IMAGE", "RAW", "MASK"
DEFAULT_MAX_PIXELS = 40_000_000


class RequestError(Exception):
    """Something wrong with one request: answered with an error, the others are still served."""


def _param(config: Dict[str, Any], key: str, default: str = "") -> str:
    value = (config.get("parameters") or {}).get(key) or {}
    return str(value.get("string_value", default)) if isinstance(value, dict) else default


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Encoded bytes -> an RGB image by the toolkit's one decoder (``aspp_deploy.runtime.images.
    decode_image``, what ``predict`` reads files with: EXIF orientation, 16-bit and palette images,
    floats refused), refusing what is not an image or declares more than ``max_pixels`` before decoding."""
    try:
        return decode_image(data, max_pixels, name=IMAGE)
    except ImageDecodeError as exc:
        if exc.unreadable:
            raise RequestError("IMAGE is not a readable image ({})".format(exc.reason)) from None
        raise RequestError("IMAGE: {}".format(exc.reason)) from None


def request_images(request: Any, max_pixels: int) -> List[Image.Image]:
    """One request's images, from ``IMAGE`` or ``RAW`` (exactly one of them)."""
    encoded = pb_utils.get_input_tensor_by_name(request, IMAGE)
    raw = pb_utils.get_input_tensor_by_name(request, RAW)
    if (encoded is None) == (raw is None):
        raise RequestError("send exactly one of IMAGE (encoded bytes) and RAW (H x W x 3 uint8)")
    if encoded is not None:
        items = encoded.as_numpy().reshape(-1)
        return [decode(bytes(item), max_pixels) for item in items]
    array = raw.as_numpy()
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise RequestError("RAW must be [batch, H, W, 3] uint8, got {} {}".format(array.dtype, list(array.shape)))
    if array.shape[1] * array.shape[2] > max_pixels or array.shape[1] < 1 or array.shape[2] < 1:
        raise RequestError("RAW images are {}x{}: at least 1x1 and at most {} pixels".format(
            array.shape[2], array.shape[1], max_pixels))
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def instance_count(config: Dict[str, Any]) -> int:
    groups = config.get("instance_group") or []
    return max(1, sum(int(g.get("count") or 1) for g in groups)) if groups else 1


def _counters(model: str, version: str, names: Dict[str, str]) -> Tuple[List[Any], List[Any]]:
    """``(families, counters)``: the counters of network runs and of images on Triton's metrics port,
    or two empty lists where the backend has no custom metrics (an old Python backend). A family must
    outlive its counters."""
    family = getattr(pb_utils, "MetricFamily", None)
    if family is None or not names:
        return [], []
    try:
        labels = {"model": model, "version": version}
        runs = family(name=names["runs"], description="network runs of the segmentation service",
                      kind=family.COUNTER)
        images = family(name=names["images"], description="images in the network runs of the segmentation service",
                        kind=family.COUNTER)
        return [runs, images], [runs.Metric(labels=labels), images.Metric(labels=labels)]
    except Exception:  # noqa: BLE001 - figures are a help, never a reason not to serve
        return [], []


def _error(message: str, server_side: bool) -> Any:
    """A per-request error: INVALID_ARG for the client's input, INTERNAL for a failure of the model."""
    code = getattr(pb_utils.TritonError, "INTERNAL" if server_side else "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class ServiceEngine(Engine):
    """The network behind the service, as a runtime engine for the ``Segmenter``: ONNX Runtime in-process
    (the runtime's ``OrtEngine``) or a model of the same repository through business-logic scripting."""

    kind = "triton-service"

    def __init__(self, config: Dict[str, Any], here: str, service: Dict[str, Any]) -> None:
        self.path = os.path.join(here, "service.json")  # type: ignore[assignment]  # named in messages
        self.executor = _param(config, "EXECUTOR", "onnxruntime")
        self.entry = service["manifest"]
        self.input_names, self.output_names = [service["input"]], [service["output"]]
        model_batch = service.get("model_batch")  # the network's fixed batch, None when dynamic
        if model_batch:
            self.min_batch = self.max_batch = int(model_batch)
        else:  # the batches Triton gathers, up to its max_batch_size
            self.min_batch, self.max_batch = 1, max(1, int(config.get("max_batch_size") or 1))
        self.target_version = int(service.get("target_version") or -1)  # -1: the network model's latest
        self.session = None  # type: Any
        if self.executor == "onnxruntime":
            from aspp_deploy.runtime.engines.ort_engine import OrtEngine

            threads = int(_param(config, "THREADS", "0"))
            if threads <= 0:  # each instance its share of the cores, not every instance all of them
                threads = max(1, cores() // instance_count(config))
            self.session = OrtEngine(os.path.join(here, service["onnx"]), threads=threads, inter_op_threads=1)
        elif self.executor == "triton":
            self.target = _param(config, "TARGET_MODEL")
            if not self.target:
                raise ValueError("EXECUTOR triton needs the TARGET_MODEL parameter")
        else:
            raise ValueError("EXECUTOR must be onnxruntime or triton, got {!r}".format(self.executor))

    def manifest(self) -> ArtifactEntry:
        return ArtifactEntry.from_dict(self.entry, self.path)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.infer(batch)
        request = pb_utils.InferenceRequest(model_name=self.target, model_version=self.target_version,
                                            requested_output_names=[self.output_name],
                                            inputs=[pb_utils.Tensor(self.input_name, batch)])
        response = request.exec()
        if response.has_error():
            raise RuntimeError("{}: {}".format(self.target, response.error().message()))
        return np.asarray(pb_utils.get_output_tensor_by_name(response, self.output_name).as_numpy())

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None


class TritonPythonModel:
    """Triton's entry points: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: Dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        self.max_pixels = int(_param(config, "MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS)))
        mask = [o for o in config.get("output", []) if o.get("name") == MASK]
        self.mask_dtype = pb_utils.triton_string_to_numpy(mask[0]["data_type"]) if mask else np.uint8
        with open(os.path.join(here, "service.json")) as f:
            service = json.load(f)
        self.families, self.counters = _counters(str(args.get("model_name") or config.get("name") or ""),
                                                 str(args["model_version"]), service.get("metrics") or {})
        self.segmenter = Segmenter(ServiceEngine(config, here, service))  # the one loop: preprocess, batches, infer, postprocess
        self.segmenter.on_run = self._count
        self.preprocess = self.segmenter.preprocess

    def _count(self, images: int) -> None:
        """One network run of ``images`` images (the rest of its batch, if any, padding) on the metrics port."""
        if self.counters:
            try:
                self.counters[0].increment(1)
                self.counters[1].increment(images)
            except Exception:  # noqa: BLE001 - a figure that cannot be counted never fails a request
                pass

    def execute(self, requests: List[Any]) -> List[Any]:
        """One response per request, in order; the batch of all good requests runs together."""
        errors = {}  # type: Dict[int, str]
        images = {}  # type: Dict[int, List[Image.Image]]
        for i, request in enumerate(requests):
            try:
                found = request_images(request, self.max_pixels)
                if len({im.size for im in found}) > 1:
                    raise RequestError("the images of one request must have one size; send them separately")
                images[i] = found
            except (RequestError, AsppDeployError) as exc:
                errors[i] = str(exc)
        order = [(i, k) for i in sorted(images) for k in range(len(images[i]))]
        masks = {}  # type: Dict[Tuple[int, int], np.ndarray]
        if order:
            try:
                found = self.segmenter.predict_batch([images[i][k] for i, k in order])
                masks.update(zip(order, found))
            except Exception as exc:  # the network failed for the whole batch: every request says why
                for i in images:
                    errors[i] = "inference failed: {}".format(exc)
        responses = []  # type: List[Any]
        for i in range(len(requests)):
            if i in errors:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(errors[i], i in images)))
                continue
            stacked = np.stack([masks[(i, k)] for k in range(len(images[i]))]).astype(self.mask_dtype, copy=False)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(MASK, stacked)]))
        return responses

    def finalize(self) -> None:
        self.segmenter.close()
        self.counters = []  # the counters go before their families
        self.families = []
