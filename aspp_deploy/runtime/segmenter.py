"""``Segmenter(engine).predict(image) -> class-id mask``: the embeddable API of the runtime, on any engine.

Everything the engine needs to be fed correctly (preprocessing, classes, palette) comes from the
engine's manifest: the one ``aspp-deploy build`` (or ``python -m aspp_deploy.runtime build``) wrote
beside a TensorRT engine, or an ONNX's own (embedded, else ``manifest.json`` beside it). This is the
one loop from images to masks: load, preprocess, batches the engine takes, infer, post-process.

Example::

    from aspp_deploy.runtime import Segmenter, overlay

    with Segmenter("engines/model.fp16.engine") as seg:   # a path: TensorRT (an .onnx: ONNX Runtime)
        mask = seg.predict("street.jpg")          # H x W uint8 class ids at the image's own size
        overlay("street.jpg", mask, seg.palette).save("street.overlay.png")

    from aspp_deploy.runtime.engines.ov_engine import OvEngine
    with Segmenter(OvEngine("models/model.onnx")) as seg:  # an engine: any runtime
        masks = seg.predict_batch(["a.jpg", "b.jpg"])
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.engines import Engine, open_engine
from aspp_deploy.runtime.images import ImageLike, load_rgb, postprocess, stack_inputs
from aspp_deploy.runtime.manifest import EngineManifest
from aspp_deploy.runtime.preprocess import Preprocess

DEFAULT_DYNAMIC_BATCH = 4  # images per run for a model that takes any batch, unless asked otherwise


class Segmenter:
    """An engine with its model's preprocessing and post-processing.

    ``engine``: an ``Engine`` (``engines.ort_engine.OrtEngine``, ``engines.ov_engine.OvEngine``,
    ``engines.trt_engine.TrtEngine``), or a path: an ``.onnx`` opens on ONNX Runtime, anything else as
    a TensorRT engine (``cuda`` and ``use_cuda_graph`` go to it). ``batch``: images per run for an
    engine that takes a range (default: its largest, at most ``DEFAULT_DYNAMIC_BATCH`` when unbounded);
    an engine with a fixed batch always runs that batch (the last images are repeated to fill it).
    """

    def __init__(self, engine: Union[Engine, str, Path], cuda: str = "auto", use_cuda_graph: bool = False,
                 batch: Optional[int] = None) -> None:
        if not isinstance(engine, Engine):
            path = Path(engine)
            if path.suffix.lower() == ".onnx":
                engine = open_engine(path)
            else:  # the manifest first: a missing preprocessing record is named before TensorRT is needed
                _required_preprocess(EngineManifest.read(path), path)
                engine = open_engine(path, cuda=cuda, use_cuda_graph=use_cuda_graph)
        self.engine = engine
        try:
            self._setup(engine, batch)
        except BaseException:
            engine.close()
            raise

    def _setup(self, engine: Engine, batch: Optional[int]) -> None:
        if len(engine.input_names) != 1 or not engine.output_names:
            raise InputError("{} has inputs {} and outputs {}: a segmentation model has one image input and an "
                             "output".format(engine.path, engine.input_names, engine.output_names))
        manifest = engine.manifest()
        self.preprocess = _required_preprocess(manifest, engine.path)  # type: Preprocess
        self.classes = [str(c) for c in manifest.classes]  # type: List[str]
        self.palette = [list(c) for c in manifest.palette]  # type: List[List[int]]
        self.manifest = manifest.to_dict()  # type: Dict[str, Any]
        wanted = self.preprocess.input_shape(1)[1:]
        if not engine.takes(wanted):
            raise InputError("{} does not take inputs of {}, which its preprocessing makes: rebuild the engine from "
                             "the ONNX it came with".format(engine.path, "x".join(map(str, wanted))))
        self.min_batch = engine.min_batch
        if engine.static_batch is not None:
            self.max_batch = engine.static_batch
        elif batch:
            if engine.max_batch is not None and batch > engine.max_batch:
                raise InputError("{} takes at most {} images per batch; {} asked for".format(
                    engine.path, engine.max_batch, batch))
            self.max_batch = max(int(batch), engine.min_batch)
        else:
            self.max_batch = engine.max_batch or max(DEFAULT_DYNAMIC_BATCH, engine.min_batch)
        # seconds spent in each step since the segmenter was made (``predict`` reports them per image)
        self.timing = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}  # type: Dict[str, float]
        self.on_run = None  # type: Optional[Callable[[int], None]]  # told the real images of each engine run

    # -- what the engine is ------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        return self.engine.kind

    @property
    def description(self) -> str:
        """Which engine runs the model, for the user: ``TensorRT 10.3.0: engines/model.fp16.engine (fp16)``."""
        return self.engine.description

    @property
    def engine_path(self) -> Path:
        return self.engine.path

    @property
    def onnx_path(self) -> Path:
        return self.engine.path

    @property
    def input_name(self) -> str:
        return self.engine.input_name

    @property
    def output_name(self) -> str:
        return self.engine.output_name

    @property
    def outputs_class_ids(self) -> bool:
        """True when the model outputs class ids (exported with ``--argmax`` or ``--fused-io``), False for scores."""
        return self.engine.outputs_class_ids

    @property
    def fused_io(self) -> bool:
        """True when the model takes uint8 pixels and returns uint8 class ids (``--fused-io``): ``preprocess``
        then stops at the pixels and the model does the normalisation and the argmax."""
        return self.preprocess.fused_io

    # -- the loop ------------------------------------------------------------------------------------

    def predict(self, image: ImageLike) -> np.ndarray:
        """One image (path, PIL image or H x W x 3 RGB uint8 array) -> H x W class ids at its own size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageLike]) -> List[np.ndarray]:
        """Several images -> one mask each, run in batches of at most ``max_batch``."""
        rgb = [load_rgb(image) for image in images]
        masks = []  # type: List[np.ndarray]
        for start in range(0, len(rgb), self.max_batch):
            masks.extend(self.segment(rgb[start:start + self.max_batch]))
        return masks

    def segment(self, chunk: Sequence[Image.Image]) -> List[np.ndarray]:
        """At most ``max_batch`` RGB images -> their masks, in one engine run."""
        t0 = time.perf_counter()
        x = self.prepare(chunk)
        t1 = time.perf_counter()
        result = self.engine.infer(x)
        t2 = time.perf_counter()
        if self.on_run is not None:
            self.on_run(len(chunk))
        masks = self.finish(result, [image.size for image in chunk])
        self.timing["preprocess"] += t1 - t0
        self.timing["inference"] += t2 - t1
        self.timing["postprocess"] += time.perf_counter() - t2
        return masks

    def prepare(self, chunk: Sequence[Image.Image]) -> np.ndarray:
        """At most ``max_batch`` RGB images -> the engine's input batch (filled to its batch size by
        repeating the last image)."""
        if len(chunk) > self.max_batch:
            raise ValueError("{} images given to one run of at most {}".format(len(chunk), self.max_batch))
        return stack_inputs([self.preprocess(image) for image in chunk], max(self.min_batch, len(chunk)))

    def finish(self, result: np.ndarray, sizes: Sequence[Sequence[int]]) -> List[np.ndarray]:
        """The engine's output for a batch -> one mask per image at its own ``(width, height)``
        (padding images beyond ``len(sizes)`` are ignored)."""
        classes = len(self.classes) or None
        return [postprocess(result[i], size, classes, self.preprocess) for i, size in enumerate(sizes)]

    def infer_raw(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed batch in the model's layout (float32 ``N x 3 x H x W`` or ``N x H x W x 3``; uint8
        ``N x H x W x 3`` pixels for a fused-I/O model) -> the engine's raw output (scores or class ids)."""
        return self.engine.infer(batch)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _required_preprocess(manifest: Any, path: Path) -> Preprocess:
    if manifest.preprocess is None:
        raise InputError("{}'s manifest records no preprocessing: build the engine from an ONNX made by "
                         "`aspp-deploy export`".format(path))
    return manifest.preprocess
