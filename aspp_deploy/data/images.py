"""What a ``--data`` path holds: a VOC-style folder (images with masks: accuracy against the labels)
or a plain folder of images (no masks: accuracy is agreement with the FP32 model, whose masks are
the reference). One ``DataSource`` for both, so every accuracy path reads data the same way.

A plain folder's images are its image files (``is_image_file``) in name order; a sample's name is
the file's stem (its whole name where two files share a stem: ``a.jpg`` and ``a.png``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from aspp_deploy.data.voc import IMAGE_FORMATS, VOCSegmentation, check_inside, is_image_file
from aspp_deploy.errors import DatasetError

MASKS = "masks"  # scored against the dataset's masks
FP32 = "fp32"    # no masks: scored against the FP32 model's own masks
LABEL_TEXT = {MASKS: "mIoU vs labels", FP32: "agreement with FP32 (no labels)"}


@dataclass(frozen=True)
class ImageSample:
    """An image without a mask (the ``Sample`` of a plain image folder)."""

    name: str
    image: Path
    mask: None = None


@dataclass
class DataSource:
    """The samples accuracy is measured on: ``kind`` is "masks" (``Sample``s of a VOC split) or
    "images" (``ImageSample``s, no masks). ``labels`` says what accuracy is scored against."""

    root: Path
    kind: str
    samples: list = field(repr=False)
    split: str | None = None
    description: str = ""  # where the images come from, for reports ("" : the folder itself)

    @property
    def labelled(self) -> bool:
        return self.kind == "masks"

    @property
    def labels(self) -> str:
        """"masks" or "fp32": what the candidate's masks are compared with."""
        return MASKS if self.labelled else FP32

    def head(self, limit: int | None) -> "DataSource":
        """The same source limited to its first ``limit`` samples (None or 0: all)."""
        return DataSource(self.root, self.kind, self.samples[:limit] if limit else list(self.samples), self.split,
                          self.description)

    def __len__(self) -> int:
        return len(self.samples)

    def __str__(self) -> str:
        return self.description or str(self.root)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in name order (hidden files never count). One
    DatasetError naming the file when one is a link that resolves outside ``folder``."""
    files = sorted(p for p in Path(folder).iterdir() if is_image_file(p) and p.is_file())
    real_root = os.path.realpath(folder)
    for p in files:
        check_inside(p, Path(folder), real_root)
    return files


def _samples(files: list[Path]) -> list[ImageSample]:
    stems = [p.stem for p in files]
    return [ImageSample(p.stem if stems.count(p.stem) == 1 else p.name, p) for p in files]


def from_images(files: list[Path], root: Path, description: str = "") -> DataSource:
    """A source of these image files (no masks), in the order given."""
    files = [Path(p) for p in files]
    if not files:
        raise DatasetError(f"no images to measure accuracy on in {root}")
    real_root = os.path.realpath(root)
    for p in files:
        check_inside(p, Path(root), real_root)
    return DataSource(Path(root), "images", _samples(files), None, description)


def data_kind(path: Path | str, split: str = "val") -> str:
    """"masks" for a VOC-style folder (``ImageSets/Segmentation/<split>.txt``), "images" for a folder
    with image files in it; one DatasetError line for anything else."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset folder not found: {path}")
    if (path / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
        return "masks"
    if any(True for _ in image_files(path)):
        return "images"
    raise DatasetError(f"{path} is not a VOC-style folder (no ImageSets/Segmentation/{split}.txt) and holds no "
                       f"images ({IMAGE_FORMATS}): give a VOC folder with masks or a folder of images")


def open_data(data: "Path | str | DataSource", split: str = "val") -> DataSource:
    """The ``DataSource`` of a ``--data`` path (or ``data`` itself when it already is one)."""
    if isinstance(data, DataSource):
        return data
    root = Path(data)
    if data_kind(root, split) == "masks":
        ds = VOCSegmentation(root, split)
        return DataSource(root, "masks", list(ds.samples), split)
    return from_images(image_files(root), root)
