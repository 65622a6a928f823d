"""The example application: segment a folder of images (or one image) and write overlays, or a
stream (a video file, an image sequence, a camera, a network stream) and write mask/overlay videos.

``segment_images`` takes any ``predict_batch`` callable (a ``Segmenter``'s method on the device);
``segment_stream`` runs a ``Segmenter`` in the pipelined stream runtime (``runtime.pipeline``). Both are
the same code in ``aspp-deploy predict`` and the bundle's ``segment``. Streams need PyAV
(``pip install av``), imported only for them; see ``runtime.video`` for the sources.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from aspp_deploy.errors import InputError
from aspp_deploy.io import atomic_file, atomic_path, atomic_save_image, make_folder
from aspp_deploy.runtime.images import (IMAGE_EXTENSIONS, IMAGE_FORMATS, class_areas, load_rgb, overlay,
                                        overlay_with_legend, palette_array)
from aspp_deploy.runtime.pipeline import StreamStats, run_stream
from aspp_deploy.runtime.video import (MASK_VIDEO_SUFFIX, OVERLAY_VIDEO_SUFFIX, STREAM_SCHEMES, Frame,
                                       MaskVideoWriter, OverlayVideo, open_source,
                                       source_kind)

FRAME_MASKS_SUFFIX = ".masks"        # folder of per-frame mask PNGs: <stem>.masks/000042.png
FRAMES_JSON_SUFFIX = ".frames.jsonl"  # one JSON line per frame: its number, time and class areas
PredictBatch = Callable[[Sequence[Any]], List[np.ndarray]]


def find_inputs(text: Any) -> tuple:
    """``("images", [files])`` for a folder or an image file, ``("stream", [text])`` for a video file,
    an image sequence pattern, a camera or a network stream (see ``runtime.video``)."""
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"{path} has no images ({IMAGE_FORMATS})")
        return "images", files
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        return "images", [path]
    kind = source_kind(str(text))
    if kind == "video" and not path.is_file():
        raise InputError(f"input not found: {path}")
    if kind is not None:
        return "stream", [str(text)]
    if not path.exists():
        raise InputError(f"input not found: {path}")
    raise InputError(f"{path.name} is neither an image ({IMAGE_FORMATS}) nor a video, image sequence, "
                     f"camera or stream ({'/'.join(s + '://' for s in STREAM_SCHEMES[:3])}...)")


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def safe_stem(name: str) -> str:
    """A file-name stem from an input's name that cannot leave the output folder or hide: no separators,
    control or reserved characters, no leading dots (``..``), bounded length."""
    stem = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    return stem[:120] or "image"


def stream_stem(text: str) -> str:
    """The output stem for a stream: a video's own stem, an image sequence's folder, ``camera0``, the
    host and path of a URL."""
    kind = source_kind(text)
    if kind == "camera":
        return "camera" + re.sub(r"\D", "", text)
    if kind == "gstreamer":
        return "gstreamer"
    if kind == "stream":
        return safe_stem(re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text).split("?")[0].replace(".", "_"))
    if kind == "sequence":
        folder = Path(text).parent.name
        return safe_stem(folder or Path(text).stem)
    return safe_stem(Path(text).stem)


def area_record(mask: np.ndarray, classes: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per class present (and every named class): its id, pixels and fraction of the mask."""
    return areas_from_counts(class_areas(mask, len(classes)), classes, int(mask.size))


def areas_from_counts(counts: np.ndarray, classes: Sequence[str], pixels: int) -> Dict[str, Dict[str, Any]]:
    """``area_record`` from the pixel counts per class id (``class_areas``) of a mask of ``pixels``."""
    total = max(1, int(pixels))
    names = list(classes) + [f"class_{i}" for i in range(len(classes), len(counts))]
    return {names[i]: {"id": i, "pixels": int(counts[i]), "fraction": round(int(counts[i]) / total, 6)}
            for i in range(len(counts)) if i < len(classes) or counts[i]}


def mask_image(mask: np.ndarray, palette: Sequence[Sequence[int]] | None) -> Image.Image:
    """A palette PNG of the class ids (VOC style), or a 32-bit image when ids exceed 255."""
    if mask.dtype != np.uint8:
        return Image.fromarray(mask.astype(np.int32))
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
    image.putpalette(palette_array(palette).reshape(-1).tolist())
    return image


def segment_images(predict_batch: PredictBatch, files: Sequence[Path], out: Path,
                   palette: Sequence[Sequence[int]] | None, alpha: float = 0.5, batch: int = 1,
                   log: Callable[[str], None] = lambda m: None,
                   classes: Sequence[str] | None = None) -> Dict[str, Any]:
    """Write ``<stem>.overlay.png`` and ``<stem>.mask.png`` per image into ``out``; returns a summary.

    With ``classes``, each overlay has a legend of the classes present (colour, name, area) on its right."""
    out.mkdir(parents=True, exist_ok=True)
    written, seconds = [], 0.0
    for start in range(0, len(files), max(1, batch)):
        chunk = list(files[start:start + max(1, batch)])
        images = [load_rgb(p) for p in chunk]
        t0 = time.perf_counter()
        masks = predict_batch(images)
        seconds += time.perf_counter() - t0
        for path, image, mask in zip(chunk, images, masks):
            overlay_path, mask_path = out / f"{path.stem}.overlay.png", out / f"{path.stem}.mask.png"
            blended = (overlay_with_legend(image, mask, palette, classes, alpha) if classes is not None
                       else overlay(image, mask, palette, alpha))
            atomic_save_image(blended, overlay_path)
            atomic_save_image(mask_image(mask, palette), mask_path)
            present = sorted(int(c) for c in np.unique(mask))
            written.append({"input": str(path), "overlay": str(overlay_path), "mask": str(mask_path),
                            "classes": present})
            named = [classes[c] if classes is not None and c < len(classes) else str(c) for c in present]
            log(f"{path.name} -> {overlay_path.name} (classes {', '.join(named)})")
    return {"kind": "images", "count": len(written), "outputs": written,
            "ms_per_image": round(1000 * seconds / max(1, len(written)), 3)}


class StreamOutputs:
    """What a stream run writes into ``out``: the mask video (on by default), the overlay video, the
    per-frame mask PNGs and the per-frame JSON lines."""

    def __init__(self, mask_video: bool = True, overlay_video: bool = False, frame_masks: bool = False,
                 frame_json: bool = False) -> None:
        self.mask_video, self.overlay_video = mask_video, overlay_video
        self.frame_masks, self.frame_json = frame_masks, frame_json

    def any(self) -> bool:
        return self.mask_video or self.overlay_video or self.frame_masks or self.frame_json


def segment_stream(seg: Any, source_text: str, out: Path, outputs: StreamOutputs, alpha: float = 0.5,
                   drop_late: bool = True, max_frames: int = 0, fps: Optional[float] = None,
                   progress: Optional[Callable[[StreamStats], None]] = None) -> Dict[str, Any]:
    """Segment the stream ``source_text`` with ``seg`` (a ``runtime.Segmenter``) in the pipelined runtime
    and write ``outputs`` into ``out``, named after the source (``clip.mask.mov``, ``clip.overlay.mp4``,
    ``clip.masks/000000.png``, ``clip.frames.jsonl``). Every file is written under a temporary name and
    renamed when the run ends (a stop with Ctrl-C included: a live stream has no other end); an error
    leaves none. Returns the summary: the source, the outputs, per-class totals and the run's figures
    (frames in/out/dropped, FPS, each stage's share)."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {alpha}")
    if not outputs.any():
        raise InputError("nothing to write: ask for a mask video, an overlay video, frame masks or frame JSON")
    classes = list(getattr(seg, "classes", []) or [])
    palette = getattr(seg, "palette", None)
    stem = stream_stem(source_text)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}  # type: Dict[str, Path]
    if outputs.mask_video:
        paths["mask_video"] = out / (stem + MASK_VIDEO_SUFFIX)
    if outputs.overlay_video:
        paths["overlay_video"] = out / (stem + OVERLAY_VIDEO_SUFFIX)
    if outputs.frame_json:
        paths["frame_json"] = out / (stem + FRAMES_JSON_SUFFIX)
    if outputs.frame_masks:
        paths["frame_masks"] = make_folder(out, stem + FRAME_MASKS_SUFFIX)
    pixels = np.zeros(max(1, len(classes)), dtype=np.int64)
    frames_with = np.zeros(max(1, len(classes)), dtype=np.int64)
    state = {"size": None}  # type: Dict[str, Any]
    with contextlib.ExitStack() as files, open_source(source_text, fps=fps) as source:
        # the encoders open their files by name (with their extension); the JSON lines are written to the
        # temporary file atomic_file opened, never reopened by name
        temps = {key: files.enter_context(atomic_path(path, suffix=path.suffix))
                 for key, path in paths.items() if key in ("mask_video", "overlay_video")}
        writers = {}  # type: Dict[str, Any]
        lines = files.enter_context(atomic_file(paths["frame_json"])) if "frame_json" in paths else None

        def consume(frame: Frame, mask: np.ndarray) -> None:
            size = (frame.rgb.shape[1], frame.rgb.shape[0])
            if state["size"] is None:
                state["size"] = size
                if "mask_video" in temps:
                    writers["mask"] = MaskVideoWriter(temps["mask_video"], size, source.fps, palette)
                    files.callback(writers["mask"].close)
                if "overlay_video" in temps:
                    writers["overlay"] = OverlayVideo(temps["overlay_video"], source.fps, palette, alpha, frame)
                    files.callback(writers["overlay"].close)
            elif size != state["size"] and writers:
                raise InputError(f"{source_text}: frame {frame.index} is {size[0]}x{size[1]}, the first was "
                                 f"{state['size'][0]}x{state['size'][1]}: a video keeps one frame size (write "
                                 "frame masks instead of videos for images of several sizes)")
            counts = class_areas(mask, len(classes))
            grow = len(counts) - len(pixels)
            if grow > 0:
                pixels.resize(len(counts), refcheck=False)
                frames_with.resize(len(counts), refcheck=False)
            pixels[:len(counts)] += counts
            frames_with[:len(counts)] += counts > 0
            if "mask" in writers:
                writers["mask"].add(frame.index, mask)
            if "overlay" in writers:
                writers["overlay"].add(frame, mask)
            if "frame_masks" in paths:
                atomic_save_image(mask_image(mask, palette), paths["frame_masks"] / f"{frame.index:06d}.png")
            if lines is not None:
                areas = areas_from_counts(counts, classes, int(mask.size))
                lines.write((json.dumps({"frame": frame.index, "time": round(frame.index / float(source.fps), 6),
                                         "areas": areas}) + "\n").encode())

        def overlay_figures() -> Tuple[float, float]:
            overlay = writers.get("overlay")
            return overlay.figures() if overlay is not None else (0.0, 0.0)

        stats = run_stream(source, seg, consume, drop_late=drop_late, max_frames=max_frames, progress=progress,
                           side_stages={"overlay": overlay_figures} if "overlay_video" in temps else None)
        if stats.frames_out == 0:
            raise InputError(f"{source_text}: no frame was segmented")
        kind, rate = source.kind, source.fps
    total = max(1, int(pixels.sum()))
    names = classes + [f"class_{i}" for i in range(len(classes), len(pixels))]
    class_rows = [{"class": names[i], "id": i, "frames": int(frames_with[i]), "pixels": int(pixels[i]),
                   "fraction": round(int(pixels[i]) / total, 6)} for i in range(len(pixels))]
    return {"kind": "stream", "source": source_text, "source_kind": kind, "fps": float(rate),
            "size": list(state["size"]) if state["size"] else None,
            "outputs": {k: str(v) for k, v in paths.items()}, "classes": class_rows, "stream": stats.to_dict()}
