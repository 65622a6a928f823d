"""Real photos from installed packages, for trying accuracy on something other than our synthetic data.

No model hub or image site is reachable from where the toolkit is often tested, but some packages
ship photographs: matplotlib (a dependency) ships Grace Hopper's portrait; scikit-image (optional)
ships an astronaut portrait, a photographer, a cup of coffee, a cat, a rocket launch and a
motorcycle. Only photos whose licence allows any use are taken (public domain or CC0, as each
package's documentation states), and each is recorded with its source and licence in
``PHOTOS.md`` beside the images. People appear in three of them; crops and mirror images of those
give person photos at other scales and positions (a crop of a photo is still a real photo).

``write_photos(folder)`` writes them as PNG files in name order, so a calibration run that takes the
first N and an accuracy run on the rest are disjoint and reproducible.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from aspp_deploy.errors import require
from aspp_deploy.io import atomic_write_bytes, atomic_write_text, ensure_writable


@dataclass(frozen=True)
class Photo:
    name: str          # file stem
    package: str       # the package that ships it
    source: str        # where it is in that package
    licence: str
    person: bool       # a person is in it


def _matplotlib(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from matplotlib import cbook

        with cbook.get_sample_data(name) as f:  # type: ignore[attr-defined]
            return Image.open(f).convert("RGB")
    return load


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        data = require("skimage.data", "these photos ship with scikit-image: pip install scikit-image")
        arr = np.asarray(getattr(data, name)())
        return Image.fromarray(arr).convert("RGB")
    return load


PD_NAVY = "public domain (U.S. Navy photograph), matplotlib sample data"
SOURCES: dict[str, tuple[Photo, Callable[[], Image.Image]]] = {
    "hopper": (Photo("hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", PD_NAVY, True),
               _matplotlib("grace_hopper.jpg")),
    "astronaut": (Photo("astronaut", "scikit-image", "skimage.data.astronaut",
                        "public domain (NASA)", True), _skimage("astronaut")),
    "camera": (Photo("camera", "scikit-image", "skimage.data.camera", "CC0 (Lav Varshney)", True),
               _skimage("camera")),
    "coffee": (Photo("coffee", "scikit-image", "skimage.data.coffee", "CC0 (Rachel Michetti)", False),
               _skimage("coffee")),
    "chelsea": (Photo("chelsea", "scikit-image", "skimage.data.chelsea", "CC0 (Stefan van der Walt)", False),
                _skimage("chelsea")),
    "rocket": (Photo("rocket", "scikit-image", "skimage.data.rocket", "public domain (SpaceX)", False),
               _skimage("rocket")),
}
# (stem, source, crop box as fractions (left, top, right, bottom), mirrored), in the order written: the
# sources alternate, so the first N (calibration) and the rest (held out) both hold people and scenes
VIEWS: list[tuple[str, str, tuple[float, float, float, float], bool]] = [
    ("hopper", "hopper", (0, 0, 1, 1), False),
    ("astronaut", "astronaut", (0, 0, 1, 1), False),
    ("coffee", "coffee", (0, 0, 1, 1), False),
    ("camera", "camera", (0, 0, 1, 1), False),
    ("hopper-face", "hopper", (0.15, 0.0, 0.85, 0.55), False),
    ("astronaut-face", "astronaut", (0.1, 0.0, 0.65, 0.6), False),
    ("chelsea", "chelsea", (0, 0, 1, 1), False),
    ("camera-crop", "camera", (0.15, 0.0, 0.85, 0.75), True),
    ("hopper-mirror", "hopper", (0, 0, 1, 1), True),
    ("astronaut-wide", "astronaut", (0, 0.1, 1, 0.8), False),
    ("rocket", "rocket", (0, 0, 1, 1), False),
    ("hopper-upper", "hopper", (0, 0, 1, 0.7), True),
    ("astronaut-mirror", "astronaut", (0, 0, 1, 1), True),
    ("camera-left", "camera", (0.0, 0.0, 0.7, 1.0), False),
    ("hopper-left", "hopper", (0.0, 0.1, 0.75, 1.0), False),
    ("astronaut-right", "astronaut", (0.3, 0.0, 1.0, 1.0), True),
    ("coffee-crop", "coffee", (0.2, 0.1, 0.9, 0.9), True),
    ("hopper-small", "hopper", (0.05, 0.0, 0.95, 0.8), False),
    ("astronaut-shoulders", "astronaut", (0.0, 0.2, 0.8, 1.0), False),
    ("camera-mirror", "camera", (0, 0, 1, 1), True),
    ("hopper-right", "hopper", (0.25, 0.05, 1.0, 0.9), True),
    ("astronaut-top", "astronaut", (0.0, 0.0, 0.9, 0.55), False),
    ("camera-top", "camera", (0.1, 0.0, 0.9, 0.55), False),
    ("hopper-tight", "hopper", (0.25, 0.05, 0.75, 0.5), True),
    ("astronaut-center", "astronaut", (0.15, 0.05, 0.85, 0.75), True),
    ("camera-wide", "camera", (0.0, 0.2, 1.0, 0.9), False),
    ("hopper-low", "hopper", (0.0, 0.3, 1.0, 1.0), False),
    ("astronaut-left", "astronaut", (0.0, 0.0, 0.6, 1.0), False),
]


def skimage_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("skimage") is not None


def write_photos(folder: Path, max_side: int = 512, people_only: bool = False) -> list[Path]:
    """Write every view that the installed packages allow as ``NN-stem.png`` (longest side at most
    ``max_side``; only those showing a person with ``people_only``: the domain of a person segmenter,
    which on a cat or a cup answers near its threshold, where agreement means little) and
    ``PHOTOS.md`` (sources and licences); returns the image paths in name order."""

    folder = Path(folder)
    ensure_writable(folder)
    have_skimage = skimage_available()
    cache: dict[str, Image.Image] = {}
    written, lines = [], ["# Real photos", "", "Written by `aspp-deploy data photos` from installed packages.", "",
                          "| file | package | source | licence | person |", "|---|---|---|---|---|"]
    order = [v for v in VIEWS if (have_skimage or SOURCES[v[1]][0].package != "scikit-image")
             and (SOURCES[v[1]][0].person or not people_only)]
    for i, (stem, src, box, mirror) in enumerate(order):
        photo, load = SOURCES[src]
        if src not in cache:
            cache[src] = load()
        im = cache[src]
        w, h = im.size
        l, t, r, b = box
        view = im.crop((round(l * w), round(t * h), round(r * w), round(b * h)))
        if mirror:
            view = ImageOps.mirror(view)
        view.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        view.save(buf, format="PNG")
        path = folder / f"{i:02d}-{stem}.png"
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
        how = f"crop {box}" + (", mirrored" if mirror else "") if box != (0, 0, 1, 1) or mirror else "whole"
        lines.append(f"| {path.name} | {photo.package} | {photo.source} ({how}) | {photo.licence} | "
                     f"{'yes' if photo.person else 'no'} |")
    if not have_skimage:
        lines += ["", "scikit-image is not installed: its photos were left out (pip install scikit-image)."]
    atomic_write_text(folder / "PHOTOS.md", "\n".join(lines) + "\n")
    return written
