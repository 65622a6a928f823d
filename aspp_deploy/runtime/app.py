"""The example application: segment a folder of images (or one image, or a video file) and write overlays.

``segment_images`` and ``segment_video`` take any ``predict_batch`` callable (a ``Segmenter``'s method on
the device), so the image loop, the overlays and the video plumbing are the same code everywhere.
Video needs OpenCV (JetPack ships ``python3-opencv``); it is imported only for video.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
from PIL import Image

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.io import atomic_path, atomic_save_image
from aspp_deploy.runtime.images import IMAGE_EXTENSIONS, IMAGE_FORMATS, load_rgb, overlay, overlay_with_legend, palette_array

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".h264")
OPENCV_HINT = "reading video needs OpenCV: sudo apt install python3-opencv (JetPack) or pip install opencv-python"
PredictBatch = Callable[[Sequence[Any]], List[np.ndarray]]


def find_inputs(path: Path) -> tuple:
    """``("images", [files])`` for a folder or an image file, ``("video", [file])`` for a video file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"{path} has no images ({IMAGE_FORMATS})")
        return "images", files
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return "images", [path]
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return "video", [path]
    raise InputError(f"{path.name} is neither an image ({IMAGE_FORMATS}) nor a video "
                     f"({'/'.join(VIDEO_EXTENSIONS)})")


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


def segment_video(predict_batch: PredictBatch, video: Path, out: Path, palette: Sequence[Sequence[int]] | None,
                  alpha: float = 0.5, limit: int = 0, log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    """Write ``<stem>.overlay.mp4`` (mp4v) into ``out``: every frame with its mask blended over it."""
    try:
        import cv2  # pyright: ignore[reportMissingImports]
    except ImportError:
        raise MissingDependencyError(OPENCV_HINT) from None
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise InputError(f"OpenCV cannot open {video} (unsupported codec or not a video)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{video.stem}.overlay.mp4"
    frames, seconds = 0, 0.0
    with atomic_path(final, suffix=".mp4") as tmp:
        writer = None
        try:
            while not limit or frames < limit:
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = np.ascontiguousarray(frame[..., ::-1])  # OpenCV decodes BGR
                t0 = time.perf_counter()
                mask = predict_batch([rgb])[0]
                seconds += time.perf_counter() - t0
                blended = np.asarray(overlay(rgb, mask, palette, alpha))[..., ::-1]
                if writer is None:
                    height, width = blended.shape[:2]
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
                    if not writer.isOpened():
                        raise InputError(f"OpenCV cannot write {final} (no mp4v encoder)")
                writer.write(np.ascontiguousarray(blended))
                frames += 1
        finally:
            if writer is not None:
                writer.release()
            capture.release()
        if frames == 0:
            raise InputError(f"{video} has no readable frames")
    log(f"{video.name}: {frames} frame(s) -> {final.name}")
    return {"kind": "video", "count": frames, "outputs": [{"input": str(video), "overlay": str(final)}],
            "ms_per_image": round(1000 * seconds / frames, 3)}
