"""The CPU side of segmentation: images in, model input out; model output in, class map and overlay out.

NumPy and Pillow only. Preprocessing is ``aspp_deploy.runtime.preprocess.Preprocess`` itself (the code the
toolkit exports, evaluates and calibrates with), so the device feeds the engine bit-identically.

Sizes follow Pillow: ``(width, height)``. Arrays are ``H x W`` (masks) or ``H x W x 3`` (RGB images).
"""

from __future__ import annotations

import re
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.preprocess import Preprocess

ImageLike = Union[Image.Image, np.ndarray, str, Path]  # typing.Union: runs on Python 3.8 (JetPack 5)
ImageSource = Union[str, Path, bytes, bytearray, memoryview]
DEFAULT_ALPHA = 0.5
NEAREST = getattr(getattr(Image, "Resampling", Image), "NEAREST")  # Image.Resampling from Pillow 9.1; older Pillows have the constant
# The one list of image files every command reads (calibration folders, JPEGImages/, predict, the
# bundle's runtime), compared without regard to case: .JPG and .Tiff count.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_FORMATS = " ".join(IMAGE_EXTENSIONS) + " (any case)"


# -- colours ------------------------------------------------------------------------------------

def voc_palette(n: int = 256) -> List[Tuple[int, int, int]]:
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



# -- decoding: the one image decoder of predict, eval, calibration, the bundle's runtime and the server ----

MAX_IMAGE_PIXELS = 64_000_000
"""The largest image (width x height) any command decodes: a 9800 x 6500 photo. The size is read from
the file's header and checked before a single pixel is decoded, so a small file that declares a huge
image costs nothing (an RGB copy of 64 Mpx is 192 MB; the model's float input and the masks come on
top). The Triton service passes its own ``MAX_IMAGE_PIXELS`` parameter instead."""

FLOAT_REFUSAL = ("floating-point pixels have no agreed range (0..1? 0..255? HDR?), so they are not guessed: "
                 "save the image as 8-bit or 16-bit")

_T: Any = getattr(Image, "Transpose", Image)  # Image.Transpose from Pillow 9.1; older Pillows have the constants
# EXIF orientation -> the transposition that shows the image as a viewer displays it (EXIF 2.3, 0x0112)
_ORIENTATION = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
                6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}
_EXIF_ORIENTATION_TAG = 0x0112


class ImageDecodeError(InputError):
    """An image that cannot be decoded: ``cannot read image NAME: REASON`` (one line). ``reason`` alone
    lets a caller with its own wording (the server's ``IMAGE ...``) say the same thing;
    ``unreadable``: the bytes are not an image Pillow can decode at all (as opposed to an image
    that is refused: too large, floating-point)."""

    def __init__(self, name: str, reason: str, unreadable: bool = False) -> None:
        super().__init__("cannot read image {}: {}".format(name, reason))
        self.name, self.reason, self.unreadable = name, reason, unreadable


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 = as stored) from what the header holds; no pixel is decoded. A
    PNG's eXIf chunk counts when it precedes the pixel data (where writers put it); malformed EXIF
    counts as no orientation, as in image viewers."""
    if getattr(im, "format", None) == "PNG" and "exif" not in im.info:
        return 1  # Image.getexif would decode the whole PNG looking for an eXIf chunk after the pixels
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: shown as stored
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def _displayed_size(size: Tuple[int, int], orientation: int) -> Tuple[int, int]:
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Decoded pixels of any mode -> a new 8-bit RGB image. One rule per kind of pixel:

    * 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ...):
      Pillow's ``convert("RGB")``; alpha is dropped (the colour under it is kept), a palette is
      expanded, CMYK is converted with Pillow's formula.
    * more than 8 bits (``I;16*``, and ``I`` with values in 0..65535): the high byte, ``v >> 8`` -- the
      rule Pillow itself applies when it reads a 16-bit RGB(A) PNG or TIFF as ``RGB``, so 16-bit grey
      and 16-bit colour images are reduced alike. ``I`` values outside 0..65535 are refused.
    * floating point (``F``): refused (``FLOAT_REFUSAL``), never clipped or guessed.
    """
    mode = im.mode
    if mode == "F" or mode.startswith("F;"):
        raise ImageDecodeError(name, FLOAT_REFUSAL)
    if mode == "I" or mode.startswith("I;"):
        a = np.asarray(im)
        if a.dtype.kind == "f":
            raise ImageDecodeError(name, FLOAT_REFUSAL)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ImageDecodeError(name, "{} pixel values {}..{} lie outside 0..65535; save it as 8-bit or 16-bit"
                                   .format(mode, int(a.min()), int(a.max())))
        high = (a.astype(np.uint32, copy=False) >> 8).astype(np.uint8)
        return Image.fromarray(high.reshape(a.shape[:2]), "L").convert("RGB")
    try:
        return im.convert("RGB")  # a new image even when already RGB (the file may be closed after)
    except ValueError:
        raise ImageDecodeError(name, "pixel mode {} cannot be converted to RGB; save it as 8-bit RGB"
                               .format(mode)) from None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).split(" <_io.BytesIO")[0]  # Pillow names the in-memory file object
    return "{}: {}".format(type(exc).__name__, text) if text else type(exc).__name__


def _open(source: ImageSource, name: Optional[str]) -> Tuple[Any, str]:
    """(what ``Image.open`` takes, the name errors give) for a path or encoded bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return BytesIO(bytes(source)), name or "<encoded bytes>"
    path = Path(source)
    if not path.is_file():
        raise InputError("image not found: {}".format(path))
    return path, name or str(path)


def _read(source: ImageSource, name: Optional[str], max_pixels: Optional[int], decode: bool) -> Any:
    fp, label = _open(source, name)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                width, height = im.size  # from the header: nothing is decoded yet
                orientation = _exif_orientation(im)
                if not decode:
                    return _displayed_size((width, height), orientation)
                if width * height > limit:
                    raise ImageDecodeError(label, "its header declares {}x{} = {} pixels, too large to decode safely "
                                           "(the limit is {} pixels; nothing was decoded)".format(
                                               width, height, width * height, limit))
                im.load()
                rgb = _to_rgb(im, label)
    except (ImageDecodeError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: refused by Image.open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageDecodeError(label, "its header declares {} pixels, too large to decode safely (the limit is {} "
                               "pixels; nothing was decoded)".format(found.group(1) if found else "too many",
                                                                    limit)) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bytes that are no image
        raise ImageDecodeError(label, _reason(exc) if isinstance(fp, BytesIO) else " ".join(str(exc).split())
                               or type(exc).__name__, unreadable=True) from None
    op = _ORIENTATION.get(orientation)
    return rgb if op is None else rgb.transpose(op)


def decode_image(source: ImageSource, max_pixels: Optional[int] = None, name: Optional[str] = None) -> Image.Image:
    """A file path or encoded bytes (JPEG, PNG, BMP, TIFF, ...) -> an 8-bit RGB PIL image, as displayed.

    The one decoder of every reader (``load_image``, ``load_rgb``, the Triton service), so the same
    file gives the same pixels everywhere:

    * refused before decoding when its header declares more than ``max_pixels`` (default
      ``MAX_IMAGE_PIXELS``) pixels;
    * the EXIF orientation is applied (``ImageOps.exif_transpose``'s table), so the model sees the
      image the way a viewer shows it and masks come out at the displayed size and orientation;
    * pixel modes are reduced to RGB by the rules of ``_to_rgb`` (16-bit: the high byte; float:
      refused).

    Errors are ``ImageDecodeError`` (an ``InputError``): ``cannot read image NAME: REASON``, NAME the
    path, or ``name``; a missing path is ``InputError("image not found: PATH")``.
    """
    return _read(source, name, max_pixels, decode=True)


def decoded_size(source: ImageSource, name: Optional[str] = None) -> Tuple[int, int]:
    """``(width, height)`` that ``decode_image`` returns for ``source``, from the header alone (the EXIF
    orientation swaps them for a quarter turn); no pixel is decoded and no size is refused."""
    return _read(source, name, None, decode=False)


def load_rgb(image: ImageLike) -> Image.Image:
    """A path, a PIL image or an ``H x W x 3`` uint8 RGB array (``H x W`` grey) -> an RGB PIL image.

    Arrays from OpenCV are BGR: convert them first (``frame[..., ::-1]``).
    """
    if isinstance(image, (str, Path)):
        return decode_image(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise InputError(f"an image array must be H x W x 3 (RGB) or H x W uint8, got {image.dtype} "
                             f"{tuple(image.shape)}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise InputError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image or an array")


def preprocess_image(image: ImageLike, preprocess: Preprocess) -> np.ndarray:
    """One image -> the model's input (exactly the toolkit's preprocessing: float32 ``3 x H x W`` or
    ``H x W x 3``, or uint8 ``H x W x 3`` pixels for a fused model)."""
    return preprocess(load_rgb(image))


def class_map(output: np.ndarray) -> np.ndarray:
    """One image's model output -> ``H x W`` class ids at the model's resolution.

    Logits (float, ``C x H x W`` or ``1 x C x H x W``) are reduced by argmax over classes; class ids
    (integer, from an export with ``--argmax``: ``H x W``, ``1 x H x W`` or ``1 x 1 x H x W``) pass through.
    """
    a = np.asarray(output)
    if a.dtype.kind == "f":
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 3:
            raise InputError(f"logits must be C x H x W for one image, got shape {tuple(a.shape)}")
        if a.shape[0] == 2:  # two classes (and one-channel models): argmax's answer from one comparison
            return _argmax_of_two(a[0], a[1])
        if 2 < a.shape[0] <= 256:
            return _argmax_of_planes(a)
        return a.argmax(axis=0)
    if a.dtype.kind not in "iu":
        raise InputError(f"model output of type {a.dtype} is neither logits nor class ids")
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"class ids must be H x W for one image, got shape {tuple(np.asarray(output).shape)}")
    return a


def _argmax_of_two(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``argmax`` over two score planes, as uint8, exactly as NumPy's (a tie or a NaN in the first picks
    0, a NaN in the second alone picks 1) at a hundredth of its cost over a strided class axis."""
    ids = np.greater(second, first)
    nan = np.isnan(second)
    if nan.any():
        ids |= nan & ~np.isnan(first)
    return ids.view(np.uint8)


def _argmax_of_planes(scores: np.ndarray) -> np.ndarray:
    """``argmax`` over the class axis of ``C x H x W`` scores (C <= 256), as uint8, exactly as NumPy's,
    a class plane at a time: a running maximum, and a pixel takes class c when c beats every class
    before it (so the first of equal scores wins). NumPy's argmax over the strided class axis costs
    7.5 ms for 6 x 512 x 512 float32 here; this, 0.6 ms. A pixel with a NaN score takes NumPy's answer
    (its first NaN)."""
    best = scores[0].copy()
    ids = np.zeros(best.shape, np.uint8)
    wins = np.empty(best.shape, bool)
    for c in range(1, scores.shape[0]):
        np.greater(scores[c], best, out=wins)
        # every earlier id is below c: a winning pixel's id becomes c, the others keep theirs
        np.maximum(ids, wins.view(np.uint8) * np.uint8(c), out=ids)
        np.maximum(best, scores[c], out=best)  # NaN propagates: a pixel with a NaN score ends NaN
    nan = np.isnan(best)
    if nan.any():
        ids[nan] = np.argmax(scores[:, nan], axis=0)
    return ids


def postprocess(output: np.ndarray, original_size: Sequence[int], num_classes: int | None = None,
                preprocess: Preprocess | None = None) -> np.ndarray:
    """One image's model output -> ``H x W`` class ids at the original ``(width, height)``: with the
    model's ``preprocess``, its geometry is undone (letterbox padding cut, centre-crop margins
    extended); without it, a nearest-neighbour resize.

    The mask is uint8 when the classes fit in a byte (the logits' channel count, or ``num_classes``),
    else int32.
    """
    ids = class_map(output)
    classes = num_classes or (np.asarray(output).shape[-3] if np.asarray(output).dtype.kind == "f" else None)
    small = classes is not None and classes <= 256 or (classes is None and ids.dtype == np.uint8)
    if small and ids.size and (int(ids.min()) < 0 or int(ids.max()) > 255):
        raise InputError(f"class ids {int(ids.min())}..{int(ids.max())} do not fit {classes} classes")
    ids = ids.astype(np.uint8 if small else np.int32, copy=False)
    width, height = int(original_size[0]), int(original_size[1])
    if preprocess is not None:
        return preprocess.restore(ids, (width, height))
    if ids.shape == (height, width):
        return np.ascontiguousarray(ids)
    resized = Image.fromarray(ids).resize((width, height), NEAREST)
    return np.asarray(resized, dtype=ids.dtype)


def palette_array(palette: Sequence[Sequence[int]] | None, size: int = 256) -> np.ndarray:
    """A ``size x 3`` uint8 colour table: the given colours first, then the VOC colour map."""
    table = np.asarray(voc_palette(size), dtype=np.uint8)
    if palette:
        colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)[:size]
        if colours.min() < 0 or colours.max() > 255:
            raise InputError("palette colours must be 0..255")
        table[: len(colours)] = colours
    return table


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """``H x W`` class ids -> ``H x W x 3`` uint8 RGB, one colour per class."""
    ids = np.asarray(mask)
    if ids.dtype.kind not in "iu":
        raise InputError(f"a mask holds integer class ids, got {ids.dtype}")
    top = int(ids.max()) + 1 if ids.size else 1
    return palette_array(palette, max(256, top))[ids]


def overlay(image: ImageLike, mask: np.ndarray, palette: Sequence[Sequence[int]] | None = None,
            alpha: float = DEFAULT_ALPHA, background: int | None = 0) -> Image.Image:
    """The image with the coloured mask blended over it (``alpha`` = mask weight).

    Pixels of class ``background`` keep the image's own colour (None: colour every class). A mask of
    another size is resized to the image with nearest neighbour.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    rgb = load_rgb(image)
    ids = np.asarray(mask)
    if ids.shape != (rgb.height, rgb.width):
        ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize(rgb.size, NEAREST), dtype=np.int32)
    base = np.asarray(rgb, dtype=np.float32)
    colour = colorize(ids, palette).astype(np.float32)
    blended = np.rint((1.0 - alpha) * base + alpha * colour)
    if background is not None:
        blended[ids == background] = base[ids == background]
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def stack_inputs(arrays: Sequence[np.ndarray], batch: int) -> np.ndarray:
    """One image's inputs (``Preprocess``'s: float32 ``3 x H x W`` or ``H x W x 3``, or a fused model's
    uint8 ``H x W x 3`` pixels) -> one batch of at least ``batch``, padded by repeating the last input.
    uint8 pixels stay uint8; anything else is float32."""
    if not arrays:
        raise InputError("no images to stack")
    padded = list(arrays) + [arrays[-1]] * max(0, batch - len(arrays))
    # one input the caller may write to: a batch view of it, not a copy (3 MiB for a 512 x 512 float input)
    single = len(padded) == 1 and np.asarray(padded[0]).flags.writeable
    stacked = np.expand_dims(padded[0], 0) if single else np.stack(padded)
    if stacked.dtype != np.uint8:
        stacked = stacked.astype(np.float32, copy=False)
    return np.ascontiguousarray(stacked)


# -- legend ---------------------------------------------------------------------------------------

LEGEND_BACKGROUND = (255, 255, 255)
LEGEND_TEXT = (20, 20, 20)


def class_areas(mask: np.ndarray, num_classes: int = 0) -> np.ndarray:
    """Pixels per class id (``max(num_classes, largest id + 1)`` counts) of an ``H x W`` class-id mask."""
    ids = np.asarray(mask)
    if ids.dtype == np.uint8 and ids.ndim == 2 and ids.size:
        # Pillow's histogram counts a byte image in C, a third of bincount's time (which widens every
        # id to 64 bits first): 0.3 ms against 0.9 ms per VGA frame, the same counts
        flat = np.ascontiguousarray(ids)
        counts = np.asarray(Image.frombuffer("L", (flat.shape[1], flat.shape[0]), flat, "raw", "L", 0, 1).histogram(),
                            dtype=np.int64)
        size = max(int(np.flatnonzero(counts)[-1]) + 1, int(num_classes), 1)
        return counts[:size] if size <= len(counts) else np.pad(counts, (0, size - len(counts)))
    ids = ids.ravel()
    if ids.size and int(ids.min()) < 0:
        raise InputError("a mask holds non-negative class ids")
    return np.bincount(ids.astype(np.int64), minlength=max(int(num_classes), 1))


def label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) from Pillow 10.1
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # older Pillow or no FreeType: the small bitmap font


def legend_entries(mask: np.ndarray, classes: Sequence[str] | None = None,
                   palette: Sequence[Sequence[int]] | None = None) -> List[Tuple[int, str, Tuple[int, int, int], float]]:
    """``(class id, name, colour, area fraction)`` of each class present in ``mask``, by class id."""
    counts = class_areas(mask)
    total = max(1, int(counts.sum()))
    names = list(classes or [])
    table = palette_array(palette, max(256, len(counts)))
    found = []
    for cid in np.flatnonzero(counts):
        cid = int(cid)
        name = names[cid] if cid < len(names) else "class_{}".format(cid)
        colour = tuple(int(v) for v in table[cid])
        found.append((cid, name, (colour[0], colour[1], colour[2]), float(counts[cid]) / total))
    return found


def _percent(fraction: float) -> str:
    """A share for people: one decimal, and a present class never reads 0.0%."""
    if 0 < fraction < 0.0005:
        return "<0.1%"
    return "{:.1f}%".format(100.0 * fraction)


def add_legend(image: Image.Image, entries: Sequence[Tuple[int, str, Tuple[int, int, int], float]],
               background: int | None = 0) -> Image.Image:
    """``image`` with a legend panel on its right: one row per entry, a colour swatch, the class name and
    its share of the image. The text scales with the image (readable when a large photo is viewed
    scaled down); the canvas grows downwards when the legend is taller than the image. The
    ``background`` class (left untinted by ``overlay``) gets a hollow swatch and says so."""
    from PIL import ImageDraw

    w, h = image.size
    size = max(12, min(72, int(round(max(w, h) / 32.0))))
    font = label_font(size)
    pad, gap, row = size // 2 + 2, size // 2 + 1, size + size // 2
    rows = [(cid, "{}{}  {}".format(name, " (untinted)" if cid == background else "", _percent(frac)), colour)
            for cid, name, colour, frac in entries] or [(-1, "no classes", LEGEND_BACKGROUND)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    per_col = max(8, (h - 2 * pad) // row)
    columns = [rows[i:i + per_col] for i in range(0, len(rows), per_col)]
    widths = [size + gap + int(max(measure.textlength(text, font=font) for _, text, _ in col)) + 1
              for col in columns]
    legend_w = pad + sum(cw + pad for cw in widths)
    legend_h = 2 * pad + max(len(col) for col in columns) * row
    canvas = Image.new("RGB", (w + legend_w, max(h, legend_h)), LEGEND_BACKGROUND)
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = w + pad
    for col, cw in zip(columns, widths):
        y = pad
        for cid, text, colour in col:
            box = [x, y + (row - size) // 2, x + size - 1, y + (row - size) // 2 + size - 1]
            if cid >= 0 and cid != background:
                draw.rectangle(box, fill=colour, outline=LEGEND_TEXT)
            elif cid >= 0:
                draw.rectangle(box, outline=LEGEND_TEXT, width=max(1, size // 8))
            draw.text((x + size + gap, y + (row - size) // 2), text, fill=LEGEND_TEXT, font=font)
            y += row
        x += cw + pad
    return canvas


def overlay_with_legend(image: ImageLike, mask: np.ndarray, palette: Sequence[Sequence[int]] | None = None,
                        classes: Sequence[str] | None = None, alpha: float = DEFAULT_ALPHA,
                        background: int | None = 0) -> Image.Image:
    """``overlay`` with a legend of the classes present (colour, name, area) to its right."""
    rgb = load_rgb(image)
    blended = overlay(rgb, mask, palette, alpha, background)
    ids = np.asarray(mask)
    if ids.shape != (rgb.height, rgb.width):
        ids = np.asarray(Image.fromarray(ids.astype(np.int32)).resize(rgb.size, NEAREST), dtype=np.int32)
    return add_legend(blended, legend_entries(ids, classes, palette), background)
