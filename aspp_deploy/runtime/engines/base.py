"""What every engine is: a loaded model with one image input, ``infer(batch) -> output``, the batch
sizes it takes, and the manifest that says how to feed it. Python 3.8 syntax, no third-party import."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Protocol, Sequence

import numpy as np

from aspp_deploy.runtime.preprocess import Preprocess


class ManifestView(Protocol):
    """What the Segmenter reads from an engine's manifest (an ``ArtifactEntry`` or an ``EngineManifest``)."""

    classes: List[str]
    palette: List[List[int]]

    @property
    def preprocess(self) -> Optional[Preprocess]: ...

    def to_dict(self) -> dict: ...


class Engine:
    """A model loaded on one inference runtime. Subclasses set the fields below when they load."""

    kind = ""                        # "onnxruntime", "openvino", "tensorrt"
    path: Path
    version: str = ""
    input_names: List[str]
    output_names: List[str]
    min_batch: int = 1               # the batch sizes the model takes: min..max (max None: any)
    max_batch: Optional[int] = None
    outputs_class_ids: bool = False  # True: integer class ids (an --argmax export), False: scores
    input_dtype: str = "float32"     # "uint8": the model takes pixels (fused I/O), the NumPy dtype's name

    @property
    def input_name(self) -> str:
        return self.input_names[0]

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    @property
    def static_batch(self) -> Optional[int]:
        """The one batch size the model takes (inputs are padded to it), None when it takes a range."""
        return self.min_batch if self.max_batch == self.min_batch else None

    def takes(self, image_shape: Sequence[int]) -> bool:
        """Whether one image of ``image_shape`` (the input without its batch axis) fits the model."""
        return True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """A preprocessed batch (``feed_array``: float32 in the model's layout, or a fused model's uint8
        N x H x W x 3 pixels) -> the model's raw output (scores or class ids)."""
        raise NotImplementedError

    def enter_thread(self) -> None:
        """Called on a thread other than the one that loaded the engine before it infers there (the
        stream pipeline's inference thread): TensorRT through pycuda makes its CUDA context current."""

    def leave_thread(self) -> None:
        """Called on that thread when it is done inferring."""

    def manifest(self) -> Any:
        """The model's verified manifest (a ``ManifestView``); InputError naming the file when it has none."""
        raise NotImplementedError

    @property
    def description(self) -> str:
        """Which engine runs which file, for the user."""
        return "{}: {}".format(self.kind, self.path)

    def close(self) -> None:
        """Release the session, the compiled model or the engine and its device memory."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def feed_array(batch: np.ndarray) -> np.ndarray:
    """A batch as an engine is fed it, C-contiguous: uint8 pixels (a fused-I/O model's input) stay uint8,
    anything else is float32. A model given the other kind refuses it with its own message."""
    array = np.asarray(batch)
    return np.ascontiguousarray(array, dtype=np.uint8 if array.dtype == np.uint8 else np.float32)


def first_line(exc: BaseException) -> str:
    """An engine's (often multi-line) error message -> its first line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
