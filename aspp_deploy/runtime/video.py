"""Video and camera streams: sources that yield RGB frames, writers for mask and overlay videos.

Python 3.8 syntax, torch-free: the Jetson runtime uses this very code. Decoding and encoding go
through PyAV (FFmpeg; ``pip install av``), imported only when a stream is opened. A source is named
the way a user would name it:

- a video file (``clip.mp4``, ``.mkv``, ``.mov``, ``.avi``, ``.webm``, ``.ts``...): every frame, none dropped;
- an image sequence, a glob (``'frames/*.png'``) or a printf pattern (``frames/%05d.png``), in name order;
- a camera: ``/dev/video0`` (V4L2), or just its number ``0``;
- a network stream: ``rtsp://``, ``rtsps://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://``;
- a GStreamer pipeline ending in ``appsink`` (``gst:nvarguscamerasrc ! ... ! appsink``): read through
  OpenCV built with GStreamer, as JetPack's ``python3-opencv`` is. This is the Jetson path to NVDEC
  (``nvv4l2decoder``) and the CSI cameras; when PyAV is not installed, OpenCV reads the other kinds too.

Cameras and network streams are live: the pipeline may drop frames to keep up with them (and counts
every one); files and image sequences never drop a frame, nor does a video file on a web server (an
``http(s)://`` URL whose length the container tells).

Outputs: the mask video holds the class ids exactly (PNG frames in a QuickTime ``.mov``, palette mode:
each pixel's value is its class id and players show the model's colours); the overlay video is H.264
in ``.mp4``. Both keep the source's frame size and rate; a dropped frame leaves its time slot empty,
so the output stays in step with the source.
"""

from __future__ import annotations

import glob
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import numpy as np

from aspp_deploy.errors import InputError, MissingDependencyError, require
from aspp_deploy.runtime.images import IMAGE_EXTENSIONS, decode_image, palette_array

AV_HINT = ("pip install av (PyAV: FFmpeg's decoders and encoders; wheels for x86-64 and aarch64, Jetson "
           "included)")
OPENCV_HINT = "OpenCV with GStreamer: sudo apt install python3-opencv (JetPack's build has GStreamer)"
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".h264", ".h265", ".hevc", ".y4m", ".gif")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
LIVE_KINDS = ("camera", "stream", "gstreamer")
DEFAULT_FPS = Fraction(25)
OPEN_TIMEOUT_S = 10.0   # how long a network stream may take to open, and to deliver the next packet
MASK_VIDEO_SUFFIX = ".mask.mov"
OVERLAY_VIDEO_SUFFIX = ".overlay.mp4"

BT709 = 1         # AVCOL_SPC_BT709, in a frame's and a stream's ``colorspace``
UNTAGGED = 2      # AVCOL_SPC_UNSPECIFIED
_BLENDABLE_MATRICES = (BT709, UNTAGGED, 5, 6)  # and AVCOL_SPC_BT470BG, AVCOL_SPC_SMPTE170M: BT.601
JPEG_RANGE = 2    # AVCOL_RANGE_JPEG: full-range YUV (yuvj420p, MJPEG cameras)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_PRINTF = re.compile(r"%0?\d*d")


class Frame(NamedTuple):
    """One decoded frame: its number in the source (dropped frames keep theirs), H x W x 3 RGB uint8,
    and, when the decoder gave 8-bit 4:2:0 limited-range YUV of an even size (most H.264 and HEVC),
    that decoded frame itself (an ``av.VideoFrame``): the overlay video blends on it and encodes it
    without converting to RGB and back."""

    index: int
    rgb: np.ndarray
    yuv: Any = None


def source_kind(text: str) -> Optional[str]:
    """What ``text`` names as a stream: ``video``, ``sequence``, ``camera``, ``stream``, ``gstreamer``;
    None for a still image or a folder (those are images, not a stream)."""
    if text.startswith("gst:"):
        return "gstreamer"
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() in STREAM_SCHEMES:
            return "stream"
        if scheme.group(1).lower() == "file":
            return source_kind(text[len("file://"):])
        raise InputError(f"{text}: unknown stream protocol {scheme.group(1)!r} (known: {', '.join(STREAM_SCHEMES)})")
    if text.isdigit() or re.fullmatch(r"/dev/video\d+", text):
        return "camera"
    if _PRINTF.search(Path(text).name) or any(c in Path(text).name for c in "*?["):
        return "sequence"
    suffix = Path(text).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def is_stream(text: str) -> bool:
    """Whether ``text`` names a stream source (see ``source_kind``) rather than images."""
    return source_kind(text) is not None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _av():
    return require("av", AV_HINT)


def av_installed() -> bool:
    try:
        _av()
    except MissingDependencyError:
        return False
    return True


class FrameSource:
    """Frames of one source, in order. ``live``: frames come at the source's pace whether or not they are
    taken (cameras, network streams); ``fps``: the nominal frame rate; ``frames``: the count when the
    container says it (None: unknown or endless)."""

    kind = ""
    live = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.fps = DEFAULT_FPS  # type: Fraction
        self.frames = None  # type: Optional[int]
        self.fps_known = False

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AvSource(FrameSource):
    """A video file, camera or network stream decoded by PyAV (FFmpeg), frame-threaded."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(name)
        av = _av()
        self.kind, self.live = kind, kind in LIVE_KINDS
        url = name
        fmt = None  # type: Optional[str]
        options = {}  # type: Dict[str, str]
        if kind == "camera":
            url, fmt = (f"/dev/video{name}" if name.isdigit() else name), "v4l2"
        elif kind == "stream" and name.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # no lost UDP packets turned into broken frames
        if kind == "video" and not Path(name).is_file():
            raise InputError(f"video not found: {name}")
        try:
            self.container = av.open(url, format=fmt, options=options,
                                     timeout=(OPEN_TIMEOUT_S, OPEN_TIMEOUT_S) if self.live else None)
        except Exception as exc:  # av.FFmpegError and its OSError kinds: one line naming the source
            raise InputError(f"cannot open {name}: {_first_line(exc)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise InputError(f"{name} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # FFmpeg decodes on its own threads, outside the GIL
        rate = self.stream.average_rate or self.stream.guessed_rate
        if rate and rate > 0:
            self.fps, self.fps_known = Fraction(rate), True
        if kind == "stream" and name.lower().startswith(("http://", "https://")) and self.container.duration:
            self.live = False  # a file on a web server (its length is known), not a live HTTP stream
        self.frames = int(self.stream.frames) if self.stream.frames and not self.live else None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        try:
            for frame in self.container.decode(self.stream):
                yield Frame(index, frame.to_ndarray(format="rgb24"), frame if _blendable(frame) else None)
                index += 1
        except Exception as exc:  # a corrupt file or a stream that went away: say where it stopped
            raise InputError(f"{self.name}: decoding stopped after {index} frame(s): {_first_line(exc)}") from None
        if index == 0:
            raise InputError(f"{self.name} has no readable frames")

    def close(self) -> None:
        self.container.close()


def _blendable(frame: Any) -> bool:
    """Whether ``YuvOverlay`` can blend on this decoded frame as it is."""
    return (frame.format.name == "yuv420p" and frame.color_range != JPEG_RANGE
            and frame.colorspace in _BLENDABLE_MATRICES and frame.width % 2 == 0 and frame.height % 2 == 0)


class SequenceSource(FrameSource):
    """An image sequence: the files a glob or printf pattern names, in name order, decoded exactly as
    still images are (``decode_image``: EXIF orientation, 16-bit and palette rules)."""

    kind = "sequence"

    def __init__(self, pattern: str, fps: Optional[float] = None) -> None:
        super().__init__(pattern)
        folder, name = os.path.split(pattern)
        if _PRINTF.search(name):
            regex = re.compile(_PRINTF.sub(lambda m: r"\d+", re.escape(name).replace(r"\%", "%")) + r"\Z")
            entries = sorted(os.listdir(folder or ".")) if os.path.isdir(folder or ".") else []
            files = [os.path.join(folder, e) for e in entries if regex.match(e)]
        else:
            files = sorted(glob.glob(pattern))
        self.files = [Path(f) for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS and Path(f).is_file()]
        if not self.files:
            raise InputError(f"no images match {pattern}")
        self.frames = len(self.files)
        if fps:
            self.fps, self.fps_known = Fraction(fps).limit_denominator(1001), True

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            yield Frame(index, np.asarray(decode_image(path), dtype=np.uint8))


class OpenCvSource(FrameSource):
    """A GStreamer pipeline (``gst:... ! appsink``), or any source when PyAV is missing, through OpenCV."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(name)
        cv2 = require("cv2", OPENCV_HINT)
        self.kind, self.live = kind, kind in LIVE_KINDS
        self._cv2 = cv2
        if kind == "gstreamer":
            self.capture = cv2.VideoCapture(name[len("gst:"):], cv2.CAP_GSTREAMER)
        elif kind == "camera":
            self.capture = cv2.VideoCapture(int(name[len("/dev/video"):] if not name.isdigit() else name))
        else:
            self.capture = cv2.VideoCapture(name)
        if not self.capture.isOpened():
            hint = " (is this OpenCV built with GStreamer? cv2.getBuildInformation() says)" if kind == "gstreamer" else ""
            raise InputError(f"OpenCV cannot open {name}{hint}")
        rate = float(self.capture.get(cv2.CAP_PROP_FPS) or 0)
        if 0 < rate < 1000:
            self.fps, self.fps_known = Fraction(rate).limit_denominator(1001), True
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frames = count if count > 0 and not self.live else None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, bgr = self.capture.read()
            if not ok:
                break
            yield Frame(index, np.ascontiguousarray(bgr[..., ::-1]))
            index += 1
        if index == 0:
            raise InputError(f"{self.name} has no readable frames")

    def close(self) -> None:
        self.capture.release()


def open_source(text: str, fps: Optional[float] = None) -> FrameSource:
    """The source ``text`` names (see the module's list). ``fps``: the frame rate of an image sequence
    (default 25), or the rate to write when a stream does not tell its own."""
    kind = source_kind(text)
    if text.lower().startswith("file://"):
        text = text[len("file://"):]
    if kind is None:
        raise InputError(f"{text} is not a video, image sequence, camera or stream")
    if kind == "sequence":
        return SequenceSource(text, fps)
    if kind == "gstreamer" or not av_installed():
        if kind != "gstreamer":
            try:
                require("cv2", OPENCV_HINT)
            except MissingDependencyError:
                raise MissingDependencyError(f"reading {text} needs PyAV: {AV_HINT}") from None
        source = OpenCvSource(text, kind)  # type: FrameSource
    else:
        source = AvSource(text, kind)
    if fps and not source.fps_known:
        source.fps, source.fps_known = Fraction(fps).limit_denominator(1001), True
    return source


# -- writers ----------------------------------------------------------------------------------------


class VideoWriter:
    """Frames -> one video file through PyAV, at ``fps`` with presentation times from the source's frame
    numbers (a dropped frame leaves its slot empty). Writes to ``tmp`` (the caller renames it)."""

    def __init__(self, tmp: Path, codec: str, pix_fmt: str, size: Tuple[int, int], fps: Fraction,
                 options: Optional[Dict[str, str]] = None, container_format: Optional[str] = None) -> None:
        av = _av()
        self.size = size
        self.container = av.open(str(tmp), mode="w", format=container_format)
        try:
            self.stream = self.container.add_stream(codec, rate=fps, options=options or {})
            self.stream.width, self.stream.height = size
            self.stream.pix_fmt = pix_fmt
            self.stream.thread_type = "AUTO"
        except BaseException:
            self.container.close()
            raise
        self._av = av
        self._last = -1

    def write(self, index: int, frame: Any) -> None:
        """``frame``: an ``av.VideoFrame``; ``index``: its frame number in the source (strictly rising)."""
        if index <= self._last:
            raise ValueError(f"frame {index} after frame {self._last}")
        frame.pts, self._last = index, index
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()


class MaskVideoWriter(VideoWriter):
    """Class-id masks -> PNG frames in palette mode (lossless: the value of each pixel is its class id,
    and players show the model's colours) in a QuickTime ``.mov``."""

    def __init__(self, tmp: Path, size: Tuple[int, int], fps: Fraction, palette: Any) -> None:
        # no PNG row filter and zlib level 1: masks are flat areas, so this is the fastest setting measured
        # (0.6 ms per VGA frame against 3.6 ms at the defaults) and the files are smaller too
        super().__init__(tmp, "png", "pal8", size, fps, options={"pred": "none", "compression_level": "1"},
                         container_format="mov")
        table = np.full((256, 4), 255, dtype=np.uint8)
        table[:, :3] = palette_array(palette)
        self.table = table

    def add(self, index: int, mask: np.ndarray) -> None:
        if mask.dtype != np.uint8:
            raise InputError("a mask video holds up to 256 classes: write --frame-masks PNGs for this model")
        self.write(index, self._av.VideoFrame.from_ndarray((np.ascontiguousarray(mask), self.table), format="pal8"))


class OverlayVideoWriter(VideoWriter):
    """Frames -> H.264 in ``.mp4``: RGB frames (4:2:0 for even sizes, 4:4:4 when a side is odd), or 4:2:0
    frames blended by ``YuvOverlay`` as they are, tagged with the colours of the source frame ``like``."""

    def __init__(self, tmp: Path, size: Tuple[int, int], fps: Fraction, crf: int = 20,
                 preset: str = "superfast", like: Any = None) -> None:
        even = size[0] % 2 == 0 and size[1] % 2 == 0
        super().__init__(tmp, "libx264", "yuv420p" if even else "yuv444p", size, fps,
                         options={"crf": str(crf), "preset": preset}, container_format="mp4")
        if like is not None:  # the source's YUV goes through unconverted: say which colours it holds
            context = self.stream.codec_context
            for tag in ("colorspace", "color_range", "color_primaries", "color_trc"):  # PyAV < 17: the first two
                value = getattr(like, tag, None)
                if value is not None:
                    setattr(context, tag, value)

    def add(self, index: int, rgb: np.ndarray) -> None:
        self.write(index, self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))

    def add_yuv(self, index: int, i420: np.ndarray) -> None:
        """``i420``: a frame as ``YuvOverlay`` returns it (``(3H/2) x W``: the Y plane, then U, then V)."""
        self.write(index, self._av.VideoFrame.from_ndarray(i420, format="yuv420p"))


def read_mask_video(path: Path) -> Iterator[Tuple[float, np.ndarray]]:
    """``(time in seconds, H x W class ids)`` of each frame of a mask video written by ``MaskVideoWriter``
    (the frame's number in the source is its time x the frame rate the run reported)."""
    av = _av()
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            array = frame.to_ndarray()
            ids = array[0] if isinstance(array, tuple) else array
            yield float(frame.time or 0.0), np.asarray(ids)


class FrameOverlay:
    """Blends a frame's mask over it (class 0 left as it is), as ``runtime.images.overlay`` does for a
    still image, in Pillow's C code (palette lookup, blend, masked paste): a few ms per VGA frame."""

    def __init__(self, palette: Any, alpha: float) -> None:
        self.palette = palette_array(palette).reshape(-1).tolist()
        self.alpha = float(alpha)
        self.keep = [0] + [255] * 255  # class 0 -> keep the image, any other class -> tint

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        from PIL import Image

        ids = mask if mask.dtype == np.uint8 else np.minimum(mask, 255).astype(np.uint8)
        ids = np.ascontiguousarray(ids)
        size = (ids.shape[1], ids.shape[0])
        base = Image.fromarray(rgb)
        classes = Image.frombuffer("P", size, ids, "raw", "P", 0, 1)
        classes.putpalette(self.palette)
        tinted = Image.blend(base, classes.convert("RGB"), self.alpha)
        base.paste(tinted, (0, 0), Image.frombuffer("L", size, ids, "raw", "L", 0, 1).point(self.keep))
        return np.asarray(base)


class YuvOverlay:
    """``FrameOverlay``'s blend done on a decoded 4:2:0 frame (``Frame.yuv``), for the overlay video: the
    class colours are blended into Y, U and V, so the frame is never converted to RGB and back (the
    blend is linear, and so is the colour conversion). Luma is blended per pixel; each chroma sample
    (one per 2 x 2 pixels) takes the tint of its top-left pixel. About 1 ms per VGA frame on one core,
    where the RGB blend took 2 and the encoder's conversion from RGB about 1 more. Read back as RGB it is
    closer to the RGB overlay, on average, than that overlay itself after the encoder's conversion to
    4:2:0 (0.2 against 1.1 levels on VGA frames of real photos); it is off only along class edges, where
    a chroma sample is shared by pixels of two classes.

    The class colours are converted with the frame's matrix: BT.709 when the frame says so, or when it
    says nothing and is HD (as players assume), else BT.601; limited range. ``Frame.yuv`` is never full
    range nor tagged with another matrix (BT.2020...): those frames are blended in RGB."""

    def __init__(self, palette: Any, alpha: float) -> None:
        self.colours = palette_array(palette).astype(np.float64)
        self.alpha = [0] + [int(round(float(alpha) * 255))] * 255  # class 0 keeps the image
        self._targets = {}  # type: Dict[bool, Tuple[list, list, list]]

    def targets(self, bt709: bool) -> Tuple[list, list, list]:
        """Each class colour's Y, U and V, as 256-entry lookup tables from class id."""
        if bt709 not in self._targets:
            kr, kb = (0.2126, 0.0722) if bt709 else (0.299, 0.114)
            r, g, b = self.colours.T
            luma = kr * r + (1 - kr - kb) * g + kb * b
            planes = (16 + 219 / 255 * luma, 128 + 224 / 255 * (b - luma) / (2 * (1 - kb)),
                      128 + 224 / 255 * (r - luma) / (2 * (1 - kr)))
            y, u, v = (np.clip(np.round(t), 0, 255).astype(int).tolist() for t in planes)
            self._targets[bt709] = (y, u, v)
        return self._targets[bt709]

    def __call__(self, frame: Any, mask: np.ndarray) -> np.ndarray:
        """A decoded frame (``Frame.yuv``) and its H x W mask -> the blended frame, ``(3H/2) x W`` uint8."""
        from PIL import Image

        w, h = frame.width, frame.height
        if mask.shape != (h, w):
            raise ValueError(f"a {mask.shape[1]}x{mask.shape[0]} mask for a {w}x{h} frame")
        i420 = frame.to_ndarray()  # a copy: Y rows, then the U and V planes, each (H/2) x (W/2)
        flat = i420.reshape(-1)
        ids = mask if mask.dtype == np.uint8 else np.minimum(mask, 255).astype(np.uint8)
        bt709 = frame.colorspace == BT709 or (frame.colorspace == UNTAGGED and h >= 720)
        ty, tu, tv = self.targets(bt709)

        def blend(start: int, plane_ids: np.ndarray, tints: Tuple[list, ...]) -> None:
            """Blend the planes starting at ``start`` in ``flat``, one per table of ``tints``, each the size
            of ``plane_ids`` (the class of each of its samples), in place."""
            plane_h, plane_w = plane_ids.shape
            size = plane_w * plane_h
            classes = Image.frombuffer("L", (plane_w, plane_h), np.ascontiguousarray(plane_ids), "raw", "L", 0, 1)
            alpha = classes.point(self.alpha)
            for tint in tints:
                plane = Image.frombuffer("L", (plane_w, plane_h), flat[start:start + size], "raw", "L", 0, 1)
                flat[start:start + size] = np.asarray(Image.composite(classes.point(tint), plane, alpha)).reshape(-1)
                start += size

        blend(0, ids, (ty,))
        blend(w * h, ids[::2, ::2], (tu, tv))  # U then V, each sample the class of its top-left pixel
        return i420


class OverlayVideo:
    """The overlay video of a stream run: each frame blended with its mask and encoded on a thread of its
    own, in order, behind a short queue, so the run's writing thread only hands frames over (blending
    and H.264 encoding take more CPU than the rest of a small model's host work). A frame that carries
    its decoded 4:2:0 picture is blended there (``YuvOverlay``) and encoded without a conversion; any
    other frame is blended in RGB (``FrameOverlay``). The first error stops the thread and is raised by
    the next ``add`` or by ``close``."""

    def __init__(self, tmp: Path, fps: Fraction, palette: Any, alpha: float, first: Frame, depth: int = 4) -> None:
        import queue
        import threading

        size = (first.rgb.shape[1], first.rgb.shape[0])
        self.writer = OverlayVideoWriter(tmp, size, fps, like=first.yuv)
        self.rgb_blend, self.yuv_blend = FrameOverlay(palette, alpha), YuvOverlay(palette, alpha)
        self.error = None  # type: Optional[BaseException]
        self._queue = queue.Queue(maxsize=depth)  # type: Any
        self._closed = self._raised = self._stopping = False
        self.busy_s = self.waited_s = 0.0
        self._thread = threading.Thread(target=self._run, name="stream-overlay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None or self._stopping:
                continue  # drain what was queued before the error was seen, or before an interrupted close
            frame, mask = item
            started = time.perf_counter()
            try:
                if frame.yuv is not None:
                    self.writer.add_yuv(frame.index, self.yuv_blend(frame.yuv, mask))
                else:
                    self.writer.add(frame.index, self.rgb_blend(frame.rgb, mask))
            except BaseException as exc:  # noqa: BLE001 - raised on the caller's thread by add/close
                self.error = exc
            self.busy_s += time.perf_counter() - started

    def add(self, frame: Frame, mask: np.ndarray) -> None:
        if self._closed:
            raise ValueError("the overlay video is closed")
        if self.error is not None:
            self._raised = True
            raise self.error
        started = time.perf_counter()
        self._queue.put((frame, mask))
        self.waited_s += time.perf_counter() - started

    def figures(self) -> Tuple[float, float]:
        """(seconds spent blending and encoding, seconds ``add`` waited for room in the queue)."""
        return self.busy_s, self.waited_s

    def close(self) -> None:
        """Finish the queued frames and the file; raises the thread's error if ``add`` has not. Interrupted
        (Ctrl-C) while the queued frames are encoded, it drops the rest and still finishes the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None)
            self._thread.join()
            if self.error is not None and not self._raised:
                raise self.error
        finally:
            if self._thread.is_alive():  # interrupted: the thread skips what is queued, then the file ends
                self._stopping = True
                self._queue.put(None)  # the first may not have gone in; a second one is never read
                self._thread.join()
            self.writer.close()
