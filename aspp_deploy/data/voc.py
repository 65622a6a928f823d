"""Pascal VOC segmentation layout: ``JPEGImages/``, ``SegmentationClass/`` (palette PNG masks of
class ids, 255 = ignore), ``ImageSets/Segmentation/<split>.txt``. One loader for every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aspp_deploy.errors import DatasetError, InputError

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The standard Pascal VOC colour map (bit-interleaved class ids)."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


def write_split_list(root: Path, split: str, ids: list[str]) -> None:
    from aspp_deploy.io import atomic_write_text

    atomic_write_text(Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")


def load_image(path: Path | str) -> Image.Image:
    """Open an image as RGB, with one clear error for a missing or undecodable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def load_mask(path: Path | str, num_classes: int) -> np.ndarray:
    """A mask PNG of class ids (palette or greyscale), checked against ``num_classes``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"mask {path} has mode {im.mode}; expected a palette (P) or "
                                   "greyscale (L) PNG of class ids")
            mask = np.array(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from None
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        labels = sorted(int(v) for v in np.unique(mask[bad]))[:5]
        raise DatasetError(f"mask {path} has labels {labels} outside 0..{num_classes - 1} "
                           f"(and {IGNORE_INDEX} = ignore)")
    return mask


def is_plain_name(name: str) -> bool:
    """A file stem that stays in its folder: no separators, no '..', no leading dot, no NUL."""
    return bool(name) and not any(c in name for c in "/\\\0") and not name.startswith(".") and ":" not in name


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    mask: Path


class VOCSegmentation:
    """The (image, mask) pairs of one split of a VOC-style folder."""

    def __init__(self, root: Path | str, split: str = "val") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{self.root} is not a VOC-style folder: missing {list_file.relative_to(self.root)}")
        names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"split list {list_file} is empty")
        bad = next((n for n in names if not is_plain_name(n)), None)
        if bad is not None:
            raise DatasetError(f"split list {list_file} names {bad!r}: a sample name is a plain file stem (no "
                               "folders, no leading dot), so nothing is read or written outside the dataset")
        self.samples = [Sample(n, self._find_image(n), self.root / "SegmentationClass" / f"{n}.png")
                        for n in names]
        missing = [s.mask for s in self.samples if not s.mask.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} mask(s) listed in {list_file.name} are missing, "
                               f"e.g. {missing[0]}")
        self.split = split

    def _find_image(self, name: str) -> Path:
        for ext in IMAGE_EXTENSIONS:
            p = self.root / "JPEGImages" / f"{name}{ext}"
            if p.is_file():
                return p
        raise DatasetError(f"image for {name!r} not found in {self.root / 'JPEGImages'}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]
