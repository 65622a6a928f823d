"""Fixtures for bring-your-own-model tests: a VOC folder with the user's own 3 classes at odd image
sizes, a calibration folder, and the tiny models' file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODELS_FILE = Path(__file__).with_name("tiny_models.py")
USER_CLASSES = ["background", "road", "car"]


def write_voc(root: Path, count: int = 4, num_classes: int = 3, seed: int = 0) -> Path:
    """Images of several sizes and aspect ratios with blocky masks of ``num_classes`` labels."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        h, w = 60 + 12 * i, 100 - 7 * i
        mask = np.zeros((h, w), np.uint8)
        mask[h // 3:, : w // 2] = 1 % num_classes
        mask[: h // 4, w // 2:] = 2 % num_classes
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8) + (mask[..., None] * 80).astype(np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"im{i}.jpg")
        Image.fromarray(mask, "L").save(root / "SegmentationClass" / f"im{i}.png")
        names.append(f"im{i}")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="session")
def user_voc(tmp_path_factory) -> Path:
    return write_voc(tmp_path_factory.mktemp("user_voc"))


@pytest.fixture(scope="session")
def user_calib(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user_calib")
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / f"c{i}.jpg")
    return root
