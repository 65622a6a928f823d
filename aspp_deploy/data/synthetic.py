"""Deterministic synthetic segmentation data, written in the Pascal VOC layout.

Each foreground class is a (shape, texture) pair; colours are drawn from one distribution for
every class, so colour never gives a class away. Objects range from ~16 px to more than half the
image, occlude each other, sit on a cluttered background (smooth colour fields, solid-colour
distractor blobs and lines, some drawn over the objects) and get sensor noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from aspp_deploy.data.voc import voc_palette, write_split_list
from aspp_deploy.io import atomic_save_image, atomic_write_text, make_folder

CLASSES = ("background", "disc", "square", "triangle", "cross", "ring")
GENERATOR_VERSION = 1
# One seed stream per split, so train, val and calibration images never coincide.
SPLIT_STREAMS = {"train": 0, "val": 1, "calib": 2}


@dataclass(frozen=True)
class SynthConfig:
    size: int = 512
    min_object: int = 16
    max_object: int = 320
    max_objects: int = 6
    noise_sigma: float = 6.0


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with a visible luminance difference (same law for every class)."""
    lum = np.array([0.299, 0.587, 0.114])
    while True:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(float(lum @ (a - b))) > 60:
            return a, b


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shape of class ``cls`` in object-local coordinates u, v in [-1, 1] (rotated)."""
    name = CLASSES[cls]
    if name == "disc":
        aspect = rng.uniform(0.7, 1.0)
        return u**2 + (v / aspect) ** 2 <= 1.0
    if name == "square":
        aspect = rng.uniform(0.7, 1.0)
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85 * aspect)
    if name == "triangle":
        return (v >= -0.8) & (v <= 0.9 - 1.7 * np.abs(u) * 1.1)
    if name == "cross":
        arm = rng.uniform(0.28, 0.4)
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        return inside & ((np.abs(u) <= arm) | (np.abs(v) <= arm))
    if name == "ring":
        inner = rng.uniform(0.45, 0.6)
        r2 = u**2 + v**2
        return (r2 <= 1.0) & (r2 >= inner**2)
    raise ValueError(name)


def _texture(cls: int, px: np.ndarray, py: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Texture of class ``cls`` in [0, 1]; px, py are rotated pixel offsets from the centre."""
    name = CLASSES[cls]
    period = rng.uniform(6.0, 14.0)
    if name == "disc":  # concentric rings
        return 0.5 + 0.5 * np.sin(2 * np.pi * np.hypot(px, py) / period)
    if name == "square":  # checkerboard
        return ((np.floor(px / period) + np.floor(py / period)) % 2).astype(np.float64)
    if name == "triangle":  # parallel stripes
        return (np.floor(px / period) % 2).astype(np.float64)
    if name == "cross":  # dot lattice
        fx, fy = (px / period) % 1.0 - 0.5, (py / period) % 1.0 - 0.5
        return (fx**2 + fy**2 <= 0.09).astype(np.float64)
    if name == "ring":  # coarse speckle
        cell = max(2, int(period / 3))
        h, w = px.shape
        small = rng.random((h // cell + 2, w // cell + 2)) > 0.5
        return np.kron(small, np.ones((cell, cell)))[:h, :w].astype(np.float64)
    raise ValueError(name)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float64)


def _draw_clutter(img: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, n: int) -> None:
    """Solid-colour blobs and thick lines; where ``mask`` is given they occlude (label 0)."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n):
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:  # blob
            cx, cy = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(4, size * 0.12, 2)
            region = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:  # line segment
            x0, y0, x1, y1 = rng.uniform(0, size, 4)
            width = rng.uniform(1.5, 5.0)
            dx, dy = x1 - x0, y1 - y0
            length2 = dx * dx + dy * dy + 1e-9
            t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0, 1)
            region = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)) <= width
        img[region] = colour
        if mask is not None:
            mask[region] = 0


def generate_sample(seed: int, split: str, index: int, cfg: SynthConfig = SynthConfig()
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 HxWx3, mask uint8 HxW) pair, a pure function of its arguments."""
    rng = _rng(seed, split, index)
    size = cfg.size
    img = _smooth_field(rng, size, int(rng.integers(3, 9)))
    mask = np.zeros((size, size), np.uint8)
    _draw_clutter(img, None, rng, int(rng.integers(3, 10)))
    n_objects = int(rng.integers(1, cfg.max_objects + 1))
    log_lo, log_hi = np.log(cfg.min_object), np.log(cfg.max_object)
    for _ in range(n_objects):
        cls = int(rng.integers(1, len(CLASSES)))
        extent = float(np.exp(rng.uniform(log_lo, log_hi)))  # object side in pixels
        half = extent / 2
        cx, cy = rng.uniform(-0.1 * size, 1.1 * size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        x0, x1 = int(max(0, np.floor(cx - half * 1.5))), int(min(size, np.ceil(cx + half * 1.5)))
        y0, y1 = int(max(0, np.floor(cy - half * 1.5))), int(min(size, np.ceil(cy + half * 1.5)))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dx, dy = xx - cx, yy - cy
        c, s = np.cos(angle), np.sin(angle)
        px, py = c * dx + s * dy, -s * dx + c * dy
        region = _shape_mask(cls, px / half, py / half, rng)
        if not region.any():
            continue
        a, b = _colour_pair(rng)
        t = _texture(cls, px, py, rng)[..., None]
        patch = img[y0:y1, x0:x1]
        patch[region] = (a * (1 - t) + b * t)[region]
        mask[y0:y1, x0:x1][region] = cls
    _draw_clutter(img, mask, rng, int(rng.integers(0, 4)))
    img += rng.normal(0, cfg.noise_sigma, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


def write_synthetic_voc(root: Path, splits: dict[str, int], seed: int = 0,
                        cfg: SynthConfig = SynthConfig(), progress=None) -> Path:
    """Write ``splits`` (name -> count) under ``root`` in the VOC layout; returns ``root``. ``root``
    may be a link (the caller's choice); a link inside it (``JPEGImages`` -> elsewhere) is refused
    before anything is written."""
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        make_folder(root, sub)
    palette = voc_palette()
    for split, count in splits.items():
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for i, name in enumerate(ids):
            image, mask = generate_sample(seed, split, i, cfg)
            write_pair(root, name, image, mask, palette)
            if progress is not None:
                progress(split, i + 1, count)
        write_split_list(root, split, ids)
    meta = {"classes": list(CLASSES), "palette": [list(c) for c in palette[: len(CLASSES)]],
            "generator": "aspp_deploy.data.synthetic", "generator_version": GENERATOR_VERSION,
            "seed": seed, "splits": splits, "image_size": cfg.size}
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=2), inside=root)
    return root


def write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray,
               palette: list[tuple[int, int, int]]) -> None:
    atomic_save_image(Image.fromarray(image), root / "JPEGImages" / f"{name}.jpg", inside=root, quality=95)
    m = Image.fromarray(mask, mode="P")
    m.putpalette([v for c in palette for v in c])
    atomic_save_image(m, root / "SegmentationClass" / f"{name}.png", inside=root)


def write_calibration_folder(folder: Path, count: int, seed: int = 0, cfg: SynthConfig = SynthConfig(),
                             progress=None) -> Path:
    """Images only (no masks), from the calibration stream: disjoint from train and val."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = generate_sample(seed, "calib", i, cfg)
        atomic_save_image(Image.fromarray(image), folder / f"calib_{i:05d}.jpg", inside=folder, quality=95)
        if progress is not None:
            progress("calib", i + 1, count)
    return folder
