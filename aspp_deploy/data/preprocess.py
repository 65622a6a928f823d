"""The one definition of preprocessing, recorded with every checkpoint and artifact.

NumPy and Pillow only (no torch), so the Jetson runtime uses this very code and feeds the
model bit-identically to the toolkit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_FILTERS = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Preprocess:
    """Resize to (height, width) with ``resize``, scale to [0, 1], normalise, HWC -> CHW float32."""

    height: int = 512
    width: int = 512
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "bilinear"
    layout: str = "NCHW"
    channel_order: str = "RGB"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    def with_size(self, height: int, width: int) -> "Preprocess":
        return Preprocess(height, width, self.mean, self.std, self.resize, self.layout, self.channel_order)

    def resize_image(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), RESIZE_FILTERS[self.resize])
        return image

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 RGB -> float32 3xHxW, normalised."""
        x = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> one float32 CHW array of the model's input size."""
        return self.normalize(np.asarray(self.resize_image(image), dtype=np.uint8))
