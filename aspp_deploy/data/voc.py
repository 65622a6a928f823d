"""Pascal VOC segmentation layout: ``JPEGImages/``, ``SegmentationClass/`` (palette PNG masks of
class ids, 255 = ignore), ``ImageSets/Segmentation/<split>.txt``. One loader for every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aspp_deploy.errors import DatasetError
from aspp_deploy.io import atomic_write_text, check_inside  # noqa: F401  (check_inside: this module's name too)
# The image rules and the VOC colours are the portable runtime's (runtime/ imports nothing from data/);
# they are this module's names too (voc_palette is re-exported).
from aspp_deploy.runtime.images import IMAGE_EXTENSIONS, IMAGE_FORMATS, decode_image, decoded_size, voc_palette  # noqa: F401

IGNORE_INDEX = 255


def is_image_file(path: Path) -> bool:
    """A file whose extension is one of ``IMAGE_EXTENSIONS`` (any case) and not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def write_split_list(root: Path, split: str, ids: list[str]) -> None:
    atomic_write_text(Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n",
                      inside=root)


def load_image(path: Path | str) -> Image.Image:
    """Open an image as 8-bit RGB, as displayed (EXIF orientation applied), with one clear error line
    naming the file for a missing, undecodable, floating-point or too large image: a thin wrapper over
    ``aspp_deploy.runtime.images.decode_image``, the decoder the bundle's runtime and the Triton
    service use too (the rules for 16-bit, palette, alpha and float images are written there)."""
    return decode_image(Path(path))


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of an image as ``load_image`` returns it (EXIF orientation applied), from its
    header (no pixels decoded); InputError when unreadable."""
    return decoded_size(Path(path))


def load_mask(path: Path | str, num_classes: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG of class ids (palette or greyscale), checked against ``num_classes`` and, when
    ``size`` (width, height) is given, against its image's size: a mask of another size would be
    scored against a prediction mapped back to the wrong geometry."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(f"mask {path} has mode {im.mode}; expected a palette (P) or "
                                   "greyscale (L) PNG of class ids")
            mask = np.array(im, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DatasetError(f"cannot read mask {path}: it is too large to decode safely") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from None
    if size is not None and (mask.shape[1], mask.shape[0]) != tuple(size):
        raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is "
                           f"{size[0]}x{size[1]}: masks must have their image's size")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        labels = sorted(int(v) for v in np.unique(mask[bad]))[:5]
        raise DatasetError(f"mask {path} has labels {labels} outside 0..{num_classes - 1} "
                           f"(and {IGNORE_INDEX} = ignore)")
    return mask


def is_plain_name(name: str) -> bool:
    """A file stem that stays in its folder: no separators, no '..', no leading dot, no NUL."""
    return bool(name) and not any(c in name for c in "/\\\0") and not name.startswith(".") and ":" not in name


def read_split_list(list_file: Path) -> list[str]:
    """The non-empty, stripped lines of a split list; one DatasetError line when it is not UTF-8."""
    try:
        text = list_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"split list {list_file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                           f"offset {exc.start}): it must hold one sample name per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


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
        check_inside(list_file, self.root)
        names = read_split_list(list_file)
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
        import os

        real_root = os.path.realpath(self.root)
        for s in self.samples:
            check_inside(s.image, self.root, real_root)
            check_inside(s.mask, self.root, real_root)
        self.split = split

    def _find_image(self, name: str) -> Path:
        folder = self.root / "JPEGImages"
        for ext in IMAGE_EXTENSIONS:  # the common case without listing the folder
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
        if getattr(self, "_by_stem", None) is None:  # NAME.JPG, NAME.Png, ...: one listing, any case
            self._by_stem: dict[str, Path] = {}
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if is_image_file(p) and p.is_file():
                        self._by_stem.setdefault(p.stem, p)
        if name in self._by_stem:
            return self._by_stem[name]
        raise DatasetError(f"image for {name!r} not found in {folder} (looked for {name} with "
                           f"{IMAGE_FORMATS})")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]
