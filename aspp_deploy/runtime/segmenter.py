"""``Segmenter(engine).predict(image) -> class-id mask``: the embeddable API of the Jetson runtime.

Everything the engine needs to be fed correctly (preprocessing, classes, palette, tensor names) comes
from the manifest ``python -m aspp_deploy.runtime build`` (or ``aspp-deploy build``) wrote beside the
engine. TensorRT and the CUDA Python package are imported when a ``Segmenter`` is made, not before.

Example::

    from aspp_deploy.runtime import Segmenter, overlay

    with Segmenter("engines/model.fp16.engine") as seg:
        mask = seg.predict("street.jpg")          # H x W uint8 class ids at the image's own size
        overlay("street.jpg", mask, seg.palette).save("street.overlay.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List

import numpy as np

from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.errors import InputError
from aspp_deploy.runtime.images import ImageLike, load_rgb, postprocess, stack_inputs


class Segmenter:
    """A TensorRT engine built from an aspp-deploy ONNX, with its preprocessing and post-processing."""

    def __init__(self, engine: Path | str, cuda: str = "auto", use_cuda_graph: bool = False) -> None:
        from aspp_deploy.trt.runtime import TrtRunner, read_engine_manifest

        self.engine_path = Path(engine)
        manifest = read_engine_manifest(self.engine_path)  # InputError without preprocessing recorded
        self.preprocess = Preprocess.from_dict(manifest["preprocess"])
        self.classes: List[str] = [str(c) for c in manifest.get("classes") or []]
        self.palette: List[List[int]] = [list(c) for c in manifest.get("palette") or []]
        self.runner = TrtRunner(self.engine_path, cuda=cuda, use_cuda_graph=use_cuda_graph)
        self.manifest = self.runner.manifest
        if len(self.runner.inputs) != 1 or not self.runner.outputs:
            raise InputError(f"{self.engine_path} has inputs {self.runner.input_names} and outputs "
                             f"{self.runner.output_names}: a segmentation engine has one image input and an output")
        tensor = self.runner.inputs[0]
        assert tensor.profile is not None
        lo, _, hi = tensor.profile
        self.input_name = tensor.name
        self.output_name = self.runner.outputs[0].name
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        wanted = self.preprocess.input_shape(1)[1:]
        if len(hi) != 4 or not all(int(a) <= w <= int(b) for a, w, b in zip(lo[1:], wanted, hi[1:])):
            raise InputError(f"{self.engine_path} takes inputs {tuple(lo)}..{tuple(hi)}, but its preprocessing "
                             f"makes {'x'.join(map(str, wanted))}: rebuild the engine from the ONNX it came with")

    backend = "tensorrt"

    @property
    def description(self) -> str:
        """Which engine runs the model, for the user: ``TensorRT 10.3.0: engines/model.fp16.engine (fp16)``."""
        version = self.manifest.get("tensorrt_version") or "?"
        return "TensorRT {}: {} ({})".format(version, self.engine_path, self.manifest.get("precision") or "?")

    @property
    def outputs_class_ids(self) -> bool:
        """True when the engine outputs class ids (exported with ``--argmax``), False for logits."""
        return self.runner.outputs[0].dtype.kind in "iu"

    def predict(self, image: ImageLike) -> np.ndarray:
        """One image (path, PIL image or H x W x 3 RGB uint8 array) -> H x W class ids at its own size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageLike]) -> List[np.ndarray]:
        """Several images -> one mask each, run in batches of the engine's batch size."""
        rgb = [load_rgb(image) for image in images]
        inputs = [self.preprocess(image) for image in rgb]
        outputs: List[np.ndarray] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = inputs[start:start + self.max_batch]
            feed = {self.input_name: stack_inputs(chunk, max(self.min_batch, len(chunk)))}
            result = self.runner.infer(feed)[self.output_name]
            outputs.extend(result[i] for i in range(len(chunk)))
        classes = len(self.classes) or None
        return [postprocess(out, image.size, classes, self.preprocess) for out, image in zip(outputs, rgb)]

    def infer_raw(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed float32 batch in the model's layout (``N x 3 x H x W`` or ``N x H x W x 3``) -> the engine's raw output (logits or class ids)."""
        return self.runner.infer({self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_name]

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
