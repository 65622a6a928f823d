"""A pipelined stream runtime: decode, preprocess, infer, post-process and write overlap.

Each stage runs in its own thread with bounded queues between them, so the slowest stage sets the
pace and memory stays bounded (a few batches in flight, never the stream). The threads spend their
time in code that releases the GIL (FFmpeg decoding and encoding, Pillow's resize, NumPy, the
inference runtime), so they overlap on a multi-core CPU, and on a Jetson the accelerator infers one
batch while the CPU prepares the next.

Frames are batched up to the engine's batch (an engine with a fixed batch is filled by repeating the
last frame). A live source (camera, network stream) is never waited for: when the pipeline falls
behind, the oldest frame waiting to be preprocessed is dropped and counted, so what comes out stays
close to real time; a file never drops a frame (``drop_late`` is ignored for it).

Python 3.8 syntax, torch-free: the Jetson runtime uses this very code.

Example::

    from aspp_deploy.runtime import Segmenter
    from aspp_deploy.runtime.pipeline import run_stream
    from aspp_deploy.runtime.video import open_source

    with Segmenter("model.onnx") as seg, open_source("clip.mp4") as source:
        stats = run_stream(source, seg, lambda frame, mask: print(frame.index, mask.shape))
    print(stats.fps, stats.shares())
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from aspp_deploy.runtime.video import Frame, FrameSource

STAGES = ("decode", "preprocess", "inference", "postprocess", "write")
_END = object()   # the end of the stream, passed down the queues
_POLL_S = 0.1     # how often a waiting stage looks whether the run was stopped


class StreamStats:
    """What a run did: frames read, written and dropped, wall time, and each stage's busy time."""

    def __init__(self, live: bool, batch: int) -> None:
        self.live, self.batch = live, batch
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.batches = 0
        self.unfinished = 0  # frames read but neither written nor dropped: in flight when the run was stopped
        self.busy = {stage: 0.0 for stage in STAGES}  # type: Dict[str, float]
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.stopped_by = None  # type: Optional[str]  # "interrupt" or "max_frames" when not the stream's end
        # Work the writing stage hands to threads of its own (the overlay video's encoder): name -> a
        # function giving (its busy seconds, the seconds the writing stage waited for it). That wait is
        # the other stage's pace, not writing's: it is counted there, not in "write".
        self.side_stages = {}  # type: Dict[str, Callable[[], Tuple[float, float]]]

    def stage_busy(self) -> Dict[str, float]:
        """Busy seconds per stage, the side stages included."""
        busy = dict(self.busy)
        for name, figures in self.side_stages.items():
            seconds, waited = figures()
            busy[name] = seconds
            busy["write"] = max(0.0, busy["write"] - waited)
        return busy

    def elapsed(self) -> float:
        return self.seconds or (time.perf_counter() - self.started)

    @property
    def fps(self) -> float:
        seconds = self.elapsed()
        return self.frames_out / seconds if seconds > 0 else 0.0

    def shares(self) -> Dict[str, float]:
        """Each stage's busy time as a share of the wall time (they overlap: the sum can pass 1; the
        largest is the stage that sets the pace)."""
        seconds = self.elapsed()
        return {stage: (busy / seconds if seconds > 0 else 0.0) for stage, busy in self.stage_busy().items()}

    def ms_per_frame(self) -> Dict[str, float]:
        n = max(1, self.frames_out)
        return {stage: round(1000.0 * busy / n, 3) for stage, busy in self.stage_busy().items()}

    def bottleneck(self) -> str:
        busy = self.stage_busy()
        return max(busy, key=lambda s: busy[s])

    def to_dict(self) -> Dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "dropped": self.dropped,
                "unfinished": self.unfinished, "live": self.live, "batch": self.batch, "batches": self.batches,
                "seconds": round(self.elapsed(), 3), "fps": round(self.fps, 2),
                "ms_per_frame": self.ms_per_frame(),
                "stage_share": {k: round(v, 3) for k, v in self.shares().items()},
                "bottleneck": self.bottleneck(), "stopped_by": self.stopped_by}


def busy_shares(run: Dict[str, Any]) -> str:
    """``busy: inference 81%, decode 12%, ...``: each stage's share of a run (``StreamStats.to_dict()``),
    largest first, for the progress and summary lines."""
    shares = sorted(run["stage_share"].items(), key=lambda kv: -kv[1])
    return "busy: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares)


class _Run:
    """The shared state of one run: the stop flag and the first error of any stage."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error = None  # type: Optional[BaseException]
        self.lock = threading.Lock()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def put(self, q: "queue.Queue[Any]", item: Any) -> bool:
        """Put, waiting while the queue is full; False when the run was stopped meanwhile."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: "queue.Queue[Any]") -> Any:
        """Get, waiting while the queue is empty; ``_END`` when the run was stopped meanwhile."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return _END

    def end(self, q: "queue.Queue[Any]") -> None:
        """Tell the next stage the stream ended (even when the queue is full and the run stopped)."""
        while True:
            try:
                q.put(_END, timeout=_POLL_S)
                return
            except queue.Full:
                if self.stop.is_set():
                    try:
                        q.get_nowait()  # nobody will read it: make room for the end marker
                    except queue.Empty:
                        pass


def _stage(run: _Run, name: str, body: Callable[[], None], out: "Optional[queue.Queue[Any]]") -> threading.Thread:
    def main() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread, raised there
            run.fail(exc)
        finally:
            if out is not None:
                run.end(out)

    thread = threading.Thread(target=main, name=f"stream-{name}", daemon=True)
    thread.start()
    return thread


def run_stream(source: FrameSource, segmenter: Any, consume: Callable[[Frame, np.ndarray], None],
               drop_late: bool = True, max_frames: int = 0, depth: int = 0,
               progress: Optional[Callable[[StreamStats], None]] = None, progress_every_s: float = 0.5,
               side_stages: Optional[Dict[str, Callable[[], Tuple[float, float]]]] = None) -> StreamStats:
    """Segment every frame of ``source`` with ``segmenter`` (a ``runtime.Segmenter``) and hand each
    frame with its mask (H x W class ids at the frame's size) to ``consume``, in order, on the calling
    thread (so its writers need no locks, and Ctrl-C stops the run there).

    ``drop_late``: a live source drops the oldest waiting frame when the pipeline falls behind (False:
    every frame is processed, and the output lags). ``max_frames``: stop after that many frames are
    read (0: the whole source; a camera runs until Ctrl-C). ``depth``: frames that may wait between
    decoding and preprocessing (0: two batches). ``progress`` is called on the calling thread about
    every ``progress_every_s`` seconds, and once at the end. ``side_stages``: threads ``consume`` hands
    work to, each as a function giving (its busy seconds, the seconds ``consume`` waited for it), so
    the figures show them as stages (see ``StreamStats.side_stages``).

    A stage's exception stops every stage and is raised here. Ctrl-C stops the run and returns what was
    written (``stats.stopped_by == "interrupt"``); the frames still in flight then are counted in
    ``stats.unfinished``.
    """
    batch = max(1, int(segmenter.max_batch))
    live = bool(source.live)
    drop = live and drop_late
    stats = StreamStats(live, batch)
    stats.side_stages.update(side_stages or {})
    run = _Run()
    frames_q = queue.Queue(maxsize=max(2, depth or 2 * batch))  # type: queue.Queue[Any]
    inputs_q = queue.Queue(maxsize=2)  # type: queue.Queue[Any]
    outputs_q = queue.Queue(maxsize=2)  # type: queue.Queue[Any]
    masks_q = queue.Queue(maxsize=2 * batch)  # type: queue.Queue[Any]
    busy = stats.busy

    def decode() -> None:
        frames = iter(source)
        while not run.stop.is_set():
            if max_frames and stats.frames_in >= max_frames:
                stats.stopped_by = stats.stopped_by or "max_frames"
                return
            t0 = time.perf_counter()
            frame = next(frames, None)
            busy["decode"] += time.perf_counter() - t0
            if frame is None:
                return
            stats.frames_in += 1
            if not drop:
                if not run.put(frames_q, frame):
                    return
                continue
            while True:  # a live source is never waited for: make room by dropping the oldest frame
                try:
                    frames_q.put_nowait(frame)
                    break
                except queue.Full:
                    try:
                        frames_q.get_nowait()
                        stats.dropped += 1
                    except queue.Empty:
                        pass

    def preprocess() -> None:
        ended = False
        while not ended:
            first = run.get(frames_q)
            if first is _END:
                return
            chunk = [first]  # type: List[Frame]
            while len(chunk) < batch:  # a file fills the batch; a live source takes what is there
                try:
                    item = frames_q.get_nowait() if live else frames_q.get(timeout=_POLL_S)
                except queue.Empty:
                    if live or run.stop.is_set():
                        break
                    continue
                if item is _END:
                    ended = True
                    break
                chunk.append(item)
            t0 = time.perf_counter()
            x = segmenter.prepare([Image.fromarray(f.rgb) for f in chunk])
            busy["preprocess"] += time.perf_counter() - t0
            if not run.put(inputs_q, (chunk, x)):
                return

    def infer() -> None:
        engine = segmenter.engine
        engine.enter_thread()  # TensorRT through pycuda: its CUDA context on this thread
        try:
            while True:
                item = run.get(inputs_q)
                if item is _END:
                    return
                chunk, x = item
                t0 = time.perf_counter()
                result = engine.infer(x)
                busy["inference"] += time.perf_counter() - t0
                stats.batches += 1
                if not run.put(outputs_q, (chunk, result)):
                    return
        finally:
            engine.leave_thread()

    def postprocess() -> None:
        while True:
            item = run.get(outputs_q)
            if item is _END:
                return
            chunk, result = item
            t0 = time.perf_counter()
            masks = segmenter.finish(result, frame_sizes(chunk))
            busy["postprocess"] += time.perf_counter() - t0
            for frame, mask in zip(chunk, masks):
                if not run.put(masks_q, (frame, mask)):
                    return

    threads = [_stage(run, "decode", decode, frames_q), _stage(run, "preprocess", preprocess, inputs_q),
               _stage(run, "inference", infer, outputs_q), _stage(run, "postprocess", postprocess, masks_q)]
    last_report = time.perf_counter()
    try:
        while True:
            try:
                item = masks_q.get(timeout=_POLL_S)
            except queue.Empty:
                if run.error is not None:
                    break
                continue
            if item is _END:
                break
            frame, mask = item
            t0 = time.perf_counter()
            consume(frame, mask)
            busy["write"] += time.perf_counter() - t0
            stats.frames_out += 1
            if progress is not None and time.perf_counter() - last_report >= progress_every_s:
                last_report = time.perf_counter()
                progress(stats)
    except KeyboardInterrupt:
        stats.stopped_by = "interrupt"
    except BaseException as exc:
        run.fail(exc)
    finally:
        run.stop.set()
        for thread in threads:
            thread.join(timeout=15.0)
    stats.seconds = time.perf_counter() - stats.started
    if run.error is not None:
        raise run.error
    stats.unfinished = max(0, stats.frames_in - stats.frames_out - stats.dropped)  # in flight at a stop
    if progress is not None:
        progress(stats)
    return stats


def frame_sizes(frames: Sequence[Frame]) -> List[Tuple[int, int]]:
    """``(width, height)`` of each frame."""
    return [(f.rgb.shape[1], f.rgb.shape[0]) for f in frames]
