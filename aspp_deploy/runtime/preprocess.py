"""The one definition of preprocessing, recorded with every checkpoint and artifact.

NumPy and Pillow only (no torch), and Python 3.8 syntax, so the Jetson runtime uses this very code
and feeds the model bit-identically to the toolkit. The same object maps a predicted mask back to
the original image (``restore``), so eval, predict and the runtime all undo the geometry alike.

Geometry (``policy``), for a model input of ``width x height``:

- ``stretch``: resize the whole image to the input size (aspect ratio not kept);
- ``letterbox``: resize to fit inside the input keeping the aspect ratio, pad the rest
  symmetrically with ``pad_value`` (pixel values, RGB);
- ``center_crop``: resize so the image covers the input keeping the aspect ratio (the short side
  fits), then crop the centre. Predictions for the cropped-off margins are extended from the
  nearest predicted pixel when masks are mapped back.

Pixel values: ``x = (pixel * scale - mean) / std`` per channel, where ``mean``/``std`` are listed
in the model's channel order (``channel_order`` RGB or BGR), then laid out NCHW or NHWC.

Fused I/O (``fused_io``, an export/import option): the graph itself does the pixel work. It takes
uint8 ``N x H x W x 3`` pixels in the model's channel order (``pixels``) and computes the normalisation
and layout above inside (the same float32 operations in the same order, so it gives the model the very
input ``normalize`` would), and returns uint8 class ids at the input size. The host keeps the
geometry (resize, letterbox, centre crop and ``restore``), so a fused and an unfused model see and
return the same pixels. ``scale``/``mean``/``std``/``layout`` then describe what the graph does
inside; ``input_layout`` and ``input_dtype`` are what it takes. A record without the key (every
record written before the option) is not fused, and an unfused record is written without it.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple

import numpy as np
from PIL import Image

from aspp_deploy.runtime.vocab import ChannelOrder, Layout, ResizePolicy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FILTERS = getattr(Image, "Resampling", Image)  # Image.Resampling from Pillow 9.1; older Pillows have the constants
RESIZE_FILTERS = {name: getattr(_FILTERS, name.upper()) for name in ("bilinear", "nearest", "bicubic")}
# The words of the record, as the shared vocabulary spells them
POLICIES = tuple(p.value for p in ResizePolicy)
LAYOUTS = tuple(layout.value for layout in Layout)
CHANNEL_ORDERS = tuple(c.value for c in ChannelOrder)
_NEAREST = getattr(_FILTERS, "NEAREST")


@dataclass(frozen=True)
class Box:
    """Where the image content sits: the image is resized to ``resized`` (w, h), and the model
    input's pixel (0, 0) is the resized image's pixel ``(x, y)`` (negative: padding before it)."""

    resized: Tuple[int, int]
    x: int
    y: int


@dataclass(frozen=True)
class Preprocess:
    """Geometry, pixel scaling, normalisation and layout of one model's input."""

    height: int = 512
    width: int = 512
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    resize: str = "bilinear"          # interpolation filter
    layout: str = "NCHW"
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0        # pixel (0..255) -> value before mean/std
    policy: str = "stretch"
    pad_value: Tuple[int, int, int] = (0, 0, 0)
    fused_io: bool = False            # the graph normalises uint8 pixels itself (module docstring)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list:
        out = []
        if not (isinstance(self.height, int) and isinstance(self.width, int)) or self.height < 1 or self.width < 1:
            out.append(f"input size {self.height}x{self.width} is impossible")
        if self.resize not in RESIZE_FILTERS:
            out.append(f"interpolation {self.resize!r} is not one of {', '.join(RESIZE_FILTERS)}")
        if self.layout not in LAYOUTS:
            out.append(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.channel_order not in CHANNEL_ORDERS:
            out.append(f"channel order {self.channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}")
        if self.policy not in POLICIES:
            out.append(f"resize policy {self.policy!r} is not one of {', '.join(POLICIES)}")
        for name, values in (("mean", self.mean), ("std", self.std), ("pad_value", self.pad_value)):
            if len(values) != 3 or not all(np.isfinite(float(v)) for v in values):
                out.append(f"{name} must be three finite numbers, got {list(values)}")
        if len(self.std) == 3 and any(float(v) <= 0 for v in self.std):
            out.append(f"std must be positive, got {list(self.std)}")
        if len(self.pad_value) == 3 and any(not 0 <= float(v) <= 255 for v in self.pad_value):
            out.append(f"pad_value must be pixel values 0..255, got {list(self.pad_value)}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            out.append(f"scale must be a positive number, got {self.scale}")
        if not isinstance(self.fused_io, bool):
            out.append(f"fused_io must be true or false, got {self.fused_io!r}")
        return out

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """The record; ``fused_io`` only when true, so an unfused record (and every digest, cache key and
        manifest made from one) is what it was before the option existed."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"], d["pad_value"] = list(self.mean), list(self.std), list(self.pad_value)
        if not self.fused_io:
            del d["fused_io"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Preprocess":
        """From a manifest's ``preprocess`` record; keys missing in older records take the defaults
        those records meant (stretch, x/255, NCHW RGB)."""
        if not isinstance(d, dict):
            raise ValueError(f"a preprocessing record must be a JSON object, got {type(d).__name__}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        if "pad_value" in known:
            known["pad_value"] = tuple(int(round(float(v))) for v in known["pad_value"])
        for key in ("height", "width"):
            if key in known:
                known[key] = int(known[key])
        if "scale" in known:
            known["scale"] = float(known["scale"])
        return cls(**known)

    def with_size(self, height: int, width: int) -> "Preprocess":
        return dataclasses.replace(self, height=int(height), width=int(width))

    def fused(self, fused_io: bool = True) -> "Preprocess":
        """The same preprocessing for a model with (or without) fused I/O."""
        return dataclasses.replace(self, fused_io=bool(fused_io))

    @property
    def input_layout(self) -> str:
        """The layout of the tensor the model takes: NHWC pixels when fused, else ``layout``."""
        return "NHWC" if self.fused_io else self.layout

    @property
    def input_dtype(self) -> str:
        """The NumPy dtype of the tensor the model takes: uint8 when fused, else float32."""
        return "uint8" if self.fused_io else "float32"

    def input_shape(self, batch: int = 1) -> Tuple[int, int, int, int]:
        if self.input_layout == "NHWC":
            return (batch, self.height, self.width, 3)
        return (batch, 3, self.height, self.width)

    # -- geometry --------------------------------------------------------------------------------

    def box(self, size: Sequence[int]) -> Box:
        """The placement of an image of ``size`` = (width, height) in the model input."""
        w0, h0 = int(size[0]), int(size[1])
        if self.policy == "stretch":
            return Box((self.width, self.height), 0, 0)
        fit = min if self.policy == "letterbox" else max
        s = fit(self.width / w0, self.height / h0)
        w1, h1 = max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))
        if self.policy == "letterbox":
            w1, h1 = min(w1, self.width), min(h1, self.height)
        else:
            w1, h1 = max(w1, self.width), max(h1, self.height)
        # letterbox: negative offsets (padding before the content); centre crop: positive (cut off)
        return Box((w1, h1), (w1 - self.width) // 2, (h1 - self.height) // 2)

    def resize_image(self, image: Image.Image) -> Image.Image:
        """An image -> an RGB image of exactly the model's input size, by ``policy``."""
        if image.mode != "RGB":  # convert("RGB") of an RGB image is a copy of every pixel, for nothing
            image = image.convert("RGB")
        box = self.box(image.size)
        if image.size != box.resized:
            image = image.resize(box.resized, RESIZE_FILTERS[self.resize])
        if box.resized == (self.width, self.height):
            return image
        if self.policy == "letterbox":
            canvas = Image.new("RGB", (self.width, self.height), tuple(int(v) for v in self.pad_value))
            canvas.paste(image, (-box.x, -box.y))
            return canvas
        return image.crop((box.x, box.y, box.x + self.width, box.y + self.height))

    def restore(self, ids: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """Class ids predicted on the model input -> class ids at the original ``size`` = (width, height).

        Undoes the geometry: nearest-neighbour for ids; letterbox padding is cut away; centre-crop
        margins take the nearest predicted class."""
        ids = np.asarray(ids)
        w0, h0 = int(size[0]), int(size[1])
        dtype = np.uint8 if ids.size == 0 or (ids.min() >= 0 and ids.max() <= 255) else np.int32
        ids = ids.astype(dtype, copy=False)
        if ids.shape != (self.height, self.width):
            ids = _resize_ids(ids, (self.width, self.height))
        box = self.box((w0, h0))
        if self.policy == "letterbox":
            ids = ids[-box.y:-box.y + box.resized[1], -box.x:-box.x + box.resized[0]]
        elif self.policy == "center_crop":
            w1, h1 = box.resized
            ids = np.pad(ids, ((box.y, h1 - self.height - box.y), (box.x, w1 - self.width - box.x)), mode="edge")
        if ids.shape != (h0, w0):
            ids = _resize_ids(ids, (w0, h0))
        return np.ascontiguousarray(ids)

    # -- pixels ----------------------------------------------------------------------------------

    def pixels(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 H x W x 3 RGB -> uint8 H x W x 3 in the model's channel order (what a fused model takes)."""
        rgb = _uint8(rgb)
        return np.ascontiguousarray(rgb[..., ::-1] if self.channel_order == "BGR" else rgb)

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels in the model's channel order (H x W x 3, or a batch N x H x W x 3) -> the float32
        normalised input in ``layout``: what a fused graph computes inside, with the same operations."""
        return self._normalised(_uint8(pixels))

    def normalize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 H x W x 3 RGB -> float32 in the model's channel order and layout, normalised."""
        return self._normalised(rgb[..., ::-1] if self.channel_order == "BGR" else rgb)

    def _normalised(self, ordered: np.ndarray) -> np.ndarray:
        """uint8 ... x H x W x 3 in the model's channel order -> float32 ``(pixel * scale - mean) / std`` in
        ``layout``, looked up per channel in a 256-entry table of those very float32 operations: the same
        bits as computing them per pixel, in a third of the time."""
        ordered = np.asarray(ordered)
        if ordered.dtype != np.uint8 or ordered.ndim < 3 or ordered.shape[-1] != 3:
            raise ValueError(f"normalize takes ... x H x W x 3 uint8 pixels, got {ordered.dtype} {ordered.shape}")
        table = _value_table(float(self.scale), tuple(self.mean), tuple(self.std))
        if self.layout == "NHWC":
            out = np.empty(ordered.shape, np.float32)
            for c in range(3):
                out[..., c] = np.take(table[c], ordered[..., c])
            return out
        out = np.empty(ordered.shape[:-3] + (3,) + ordered.shape[-3:-1], np.float32)
        for c in range(3):
            if ordered.ndim == 3:  # one image: each channel plane is contiguous, filled in place
                np.take(table[c], ordered[..., c], out=out[c])
            else:
                out[..., c, :, :] = np.take(table[c], ordered[..., c])
        return out

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 H x W x 3 RGB at the input size -> what the model takes: ``pixels`` when fused, else
        ``normalize``."""
        return self.pixels(rgb) if self.fused_io else self.normalize(rgb)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> one array of the model's input: float32 (3 x H x W or H x W x 3), or uint8
        H x W x 3 pixels for a fused model."""
        return self.model_input(np.asarray(self.resize_image(image), dtype=np.uint8))

    def random_input(self, batch: int, seed: int = 0) -> np.ndarray:
        """Inputs of the model's shape for parity checks and timing: standard-normal float32, or uniform
        uint8 pixels for a fused model."""
        rng = np.random.default_rng(seed)
        if self.fused_io:
            return rng.integers(0, 256, size=self.input_shape(batch), dtype=np.uint8)
        return rng.standard_normal(self.input_shape(batch)).astype(np.float32)


def _uint8(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim < 3 or array.shape[-1] != 3:
        raise ValueError("pixels must be uint8 ... x H x W x 3, got {} {}".format(array.dtype, list(array.shape)))
    return array


@functools.lru_cache(maxsize=16)
def _value_table(scale: float, mean: Tuple[float, ...], std: Tuple[float, ...]) -> np.ndarray:
    """3 x 256 float32: channel c's input value for each pixel value, in the model's channel order
    (``mean``/``std`` are listed in that order), computed with the float32 operations of the formula."""
    pixels = np.arange(256, dtype=np.float32)[None, :] * np.float32(scale)
    table = (pixels - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.setflags(write=False)
    return table


def _resize_ids(ids: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if ids.dtype == np.uint8:
        return np.asarray(Image.fromarray(ids).resize(size, _NEAREST), dtype=np.uint8)
    return np.asarray(Image.fromarray(ids.astype(np.int32)).resize(size, _NEAREST), dtype=ids.dtype)
