"""Calibration data: one shape for every consumer.

``CalibrationData`` is an iterable of ``{input_name: batch}`` (float32 in the model's layout, or the uint8
N x H x W x 3 pixels a fused-I/O model takes) built from a folder of images run through exactly the
``Preprocess`` of the model's manifest. ONNX Runtime takes it
through ``OrtCalibrationReader`` (its ``CalibrationDataReader`` interface, in chunks: see
``int8_ort.stream_calibrate``), ModelOpt as one ``.npy`` file written batch by batch and
memory-mapped by its worker, and the TensorRT calibrator (``aspp_deploy/runtime/trt/calibrator.py``) as
the plain iterable.

Memory: images are decoded batch by batch as they are iterated, never all at once, so what
calibration holds does not grow with the number of images (``load`` checks every file up front
and keeps nothing).

Images of any reasonable size are accepted: the manifest's preprocessing resizes each one to
the model's input size, exactly as evaluation and deployment do. An image with a side below a
quarter of the model's is refused (upscaled that far it no longer looks like a deployment input,
and its activation ranges would mislead calibration). Which images calibrate and which measure
accuracy is the host's choice (``aspp_deploy.precision.calibration``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from aspp_deploy.errors import DatasetError
from aspp_deploy.io import check_inside, hash_named_files
from aspp_deploy.runtime.images import IMAGE_EXTENSIONS, decode_image
from aspp_deploy.runtime.preprocess import Preprocess

# The first 64 images in name order, as `build --legacy-int8` and `bundle` take: 64 images of 512x512 give
# each activation histogram millions of samples, and a cold `compare` stays within 3 minutes on 2 cores.
DEFAULT_CALIB_SIZE = 64
SHIPPED_CALIBRATION = Path(__file__).resolve().parents[2] / "calibration"  # the default --calib
MIN_SIDE_FRACTION = 4  # an image side below model side / 4 is refused


class CalibrationFolderError(DatasetError):
    """The calibration folder is missing, empty, unreadable or overlaps the validation split."""


def calibration_files(folder: Path, limit: int = DEFAULT_CALIB_SIZE) -> list[Path]:
    """The first ``limit`` image files of ``folder`` in name order (0: all of them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationFolderError(f"calibration folder not found: {folder}")
    if limit < 0:
        raise CalibrationFolderError(f"--calib-size {limit} is impossible: use 0 (all) or a positive count")
    # hidden files are never input: an interrupted writer's temporary file, editor and OS droppings
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        others = sum(1 for p in folder.iterdir() if p.is_file())
        what = f"{others} file(s), none of them an image" if others else "nothing"
        raise CalibrationFolderError(f"calibration folder {folder} has no images ({what}); expected "
                                     f"{'/'.join(IMAGE_EXTENSIONS)} files")
    files = files[:limit] if limit else files
    for f in files:  # a link in the folder never makes calibration read a file from elsewhere
        check_inside(f, folder)
    return files


def data_digest(files: list[Path]) -> str:
    """sha256 over the (name, content sha256) of every file, in order."""
    h = hashlib.sha256()
    hash_named_files(h, files)
    return h.hexdigest()


@dataclass
class CalibrationData:
    """An iterable of ``{input_name: batch}``, what the model takes (``Preprocess.input_dtype``: float32 in
    its layout, or uint8 pixels for a fused-I/O model); iterating again starts over.

    Every image is decoded and checked up front (``load``), so a bad file fails before any work
    starts; the decoded images are not kept: each pass decodes one batch at a time, so memory
    stays one batch whatever the number of images (a pass over 100 images costs about a second
    of decoding, next to minutes of calibration).
    """

    files: list[Path]
    preprocess: Preprocess
    input_name: str = "input"
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= len(self.files):
            raise CalibrationFolderError(f"the model takes batches of {self.batch_size} but only "
                                         f"{len(self.files)} calibration image(s) were given")
        self._checked_all = False

    def load(self) -> "CalibrationData":
        """Decode and check every image once (a bad or too small file fails here); keeps nothing."""
        if not self._checked_all:
            for p in self.files:
                self.preprocess(self._checked(p))
            self._checked_all = True
        return self

    def _checked(self, path: Path):
        image = decode_image(Path(path))
        min_h = -(-self.preprocess.height // MIN_SIDE_FRACTION)
        min_w = -(-self.preprocess.width // MIN_SIDE_FRACTION)
        if image.height < min_h or image.width < min_w:
            raise CalibrationFolderError(
                f"calibration image {path.name} is {image.width}x{image.height}, too small for a "
                f"{self.preprocess.width}x{self.preprocess.height} model (at least {min_w}x{min_h}): "
                "calibrate on images like the ones the model will see")
        return image

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` preprocessed (the model's input dtype and layout, no batch axis)."""
        return np.asarray(self.preprocess(self._checked(self.files[i])), dtype=self.preprocess.input_dtype)

    def batch(self, i: int) -> np.ndarray:
        """Batch ``i`` as one contiguous array."""
        b = self.batch_size
        return np.ascontiguousarray(np.stack([self.image(k) for k in range(i * b, (i + 1) * b)]))

    @property
    def array(self) -> np.ndarray:
        """All images as one array (N x 3 x H x W, or N x H x W x 3 for NHWC and fused models).
        Decoded on each access and held by the caller: for small sets only (tests); the
        pipeline iterates instead."""
        return np.stack([self.image(i) for i in range(len(self.files))])

    @property
    def image_nbytes(self) -> int:
        """Bytes of one image as the model's float input (what its intermediate tensors scale with, fused or not)."""
        return 4 * 3 * self.preprocess.height * self.preprocess.width

    def __len__(self) -> int:
        """Number of batches (a last partial batch is dropped: static-batch models need full ones)."""
        return len(self.files) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield {self.input_name: self.batch(i)}

    def batches(self, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        """Batches ``start`` to ``stop - 1``, decoded one at a time."""
        for i in range(max(start, 0), min(stop, len(self))):
            yield {self.input_name: self.batch(i)}

    def head(self, n: int) -> "CalibrationData":
        """The same data limited to its first ``n`` images."""
        sub = CalibrationData(self.files[:n], self.preprocess, self.input_name, self.batch_size)
        sub._checked_all = self._checked_all
        return sub


def ort_reader(data: CalibrationData):
    """An ONNX Runtime ``CalibrationDataReader`` over ``data`` (rewindable; ``set_range`` limits it
    to a range of batches, as ORT's strided calibration asks). Batches are decoded as read."""
    from onnxruntime.quantization import CalibrationDataReader

    class OrtCalibrationReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._range = (0, len(data))
            self._it: Iterator[dict[str, np.ndarray]] = data.batches(*self._range)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = data.batches(*self._range)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._range = (start_index, end_index)
            self.rewind()

        def __len__(self) -> int:
            return len(data)

    return OrtCalibrationReader()
