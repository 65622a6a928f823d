"""Frames per second from video file to written masks: inference alone, the stream pipeline end to end,
with an overlay video, fused and unfused I/O, per model, in one run.

    python benchmarks/bench_streams.py [--models shipped,selfie] [--frames 48] [--size 640x480]
                                       [--threads 2] [--rounds 3] [--work bench-streams] [--json FILE]

Models: the shipped checkpoint (``aspp-deploy export``, 512x512 DeepLab-ResNet, 6 classes) and a small
real one, MediaPipe's selfie segmenter (256x256, one sigmoid channel; ``aspp-deploy import`` of the
TFLite file inside the mediapipe 0.10.14 wheel: ``pip download --no-deps mediapipe==0.10.14 -d .whl``).
Each is also exported with ``--fused-io`` (uint8 NHWC frames in, uint8 class ids out) when this
checkout has that option. The video: ``--frames`` frames at ``--size`` made from real photos (people
for the person segmenter), H.264, panned so no two frames are equal.

Per model and I/O kind, on ONNX Runtime with ``--threads`` threads, every mode once per round, rounds
interleaved (compare figures within one run only; the CPU and its flags are printed):

- ``infer only``: the engine's ``infer`` on a preprocessed batch, the frames' count of times;
- ``infer asleep``: the same on the session the pipeline uses (threads sleep between runs): how much
  of the gap to ``infer only`` is ONNX Runtime's spinning rather than the host's work;
- ``sequential``: decode, preprocess, infer, post-process, write the mask video one after another
  (what ``predict`` did before streams);
- ``pipelined``: ``segment_stream`` (the runtime's pipeline) writing the mask video, on a session opened
  as ``predict`` opens it for a stream (intra-op threads sleep between runs; the other modes keep ONNX
  Runtime's default busy-waiting, its best back-to-back latency);
- ``+ overlay``: the same, writing the H.264 overlay video too.

Printed: FPS (median over rounds), the ratio of end to end to inference only, the overlay's cost, the
host-side preprocess + post-process ms per frame (busy time of those stages), and where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SELFIE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
MODES = ("infer only", "infer asleep", "sequential", "pipelined", "+ overlay")


def cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from aspp_deploy.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True)


def find_wheel() -> Path | None:
    given = os.environ.get("ASPP_MEDIAPIPE_WHEEL")
    candidates = [Path(given)] if given else sorted(Path(".whl").glob("mediapipe-0.10.14-*.whl"))
    return next((c for c in candidates if c.is_file()), None)


def fused_supported() -> bool:
    return "--fused-io" in cli("export", "--help").stdout


def make_models(names: list[str], work: Path, fused: bool) -> dict[str, Path]:
    """name (``shipped``, ``shipped fused``, ``selfie``...) -> ONNX, made with the CLI as a user would."""
    models: dict[str, Path] = {}
    for name in names:
        for kind in ("", " fused") if fused else ("",):
            out = work / (name + kind.replace(" ", "-"))
            onnx = out / "model.onnx"
            extra = ["--fused-io"] if kind else []
            if not onnx.is_file():
                if name == "shipped":
                    r = cli("export", "--out", out, *extra)
                else:
                    wheel = find_wheel()
                    if wheel is None:
                        print(f"skipped {name}: needs the mediapipe 0.10.14 wheel (pip download --no-deps "
                              "mediapipe==0.10.14 -d .whl)")
                        break
                    tflite = work / "selfie.tflite"
                    with zipfile.ZipFile(wheel) as z:
                        tflite.write_bytes(z.read(SELFIE))
                    r = cli("import", tflite, "--out", out, *extra)
                if r.returncode:
                    sys.exit(f"error: making {name}{kind}: {(r.stderr or r.stdout).strip().splitlines()[-1]}")
            models[name + kind] = onnx
    return models


def make_video(path: Path, frames: int, size: tuple[int, int], people: bool) -> None:
    import av
    from PIL import Image

    from aspp_deploy.data.photos import write_photos

    with tempfile.TemporaryDirectory() as tmp:
        photos = [Image.open(p).convert("RGB") for p in write_photos(Path(tmp), max_side=max(size) * 2,
                                                                      people_only=people)]
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            photo = photos[(i // 8) % len(photos)].resize((w + 64, h + 48))
            dx, dy = (i * 8) % 64, (i * 6) % 48
            rgb = np.ascontiguousarray(np.asarray(photo)[dy:dy + h, dx:dx + w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def infer_only(seg, video: Path, frames: int) -> dict:
    from PIL import Image

    from aspp_deploy.runtime.video import open_source

    with open_source(str(video)) as source:
        first = next(iter(source)).rgb
    x = seg.prepare([Image.fromarray(first)] * seg.max_batch)
    seg.engine.infer(x)  # warm-up
    runs = -(-frames // seg.max_batch)
    t0 = time.perf_counter()
    for _ in range(runs):
        seg.engine.infer(x)
    seconds = time.perf_counter() - t0
    return {"fps": runs * seg.max_batch / seconds}


def sequential(seg, video: Path, out: Path) -> dict:
    """Decode, preprocess, infer, post-process and write one frame after another, on one thread."""
    from PIL import Image

    from aspp_deploy.runtime.video import MaskVideoWriter, open_source

    busy = {"decode": 0.0, "preprocess": 0.0, "inference": 0.0, "postprocess": 0.0, "write": 0.0}
    writer, n = None, 0
    t_start = time.perf_counter()
    with open_source(str(video)) as source:
        frames = iter(source)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            t1 = time.perf_counter()
            busy["decode"] += t1 - t0
            if frame is None:
                break
            x = seg.prepare([Image.fromarray(frame.rgb)])
            t2 = time.perf_counter()
            result = seg.engine.infer(x)
            t3 = time.perf_counter()
            mask = seg.finish(result, [(frame.rgb.shape[1], frame.rgb.shape[0])])[0]
            t4 = time.perf_counter()
            if writer is None:
                writer = MaskVideoWriter(out / "sequential.mask.mov", (frame.rgb.shape[1], frame.rgb.shape[0]),
                                         source.fps, seg.palette)
            writer.add(frame.index, mask)
            n += 1
            busy["preprocess"] += t2 - t1
            busy["inference"] += t3 - t2
            busy["postprocess"] += t4 - t3
            busy["write"] += time.perf_counter() - t4
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - t_start
    return {"fps": n / seconds, "ms_per_frame": {k: 1000 * v / n for k, v in busy.items()}}


def pipelined(seg, video: Path, out: Path, overlay: bool) -> dict:
    from aspp_deploy.runtime.app import StreamOutputs, segment_stream

    cpu0 = time.process_time()
    summary = segment_stream(seg, str(video), out, StreamOutputs(mask_video=True, overlay_video=overlay))
    cpu = time.process_time() - cpu0
    run = summary["stream"]
    assert run["frames_out"] == run["frames_in"] and not run["dropped"], run
    return {"fps": run["frames_out"] / run["seconds"], "ms_per_frame": run["ms_per_frame"],
            "share": run["stage_share"], "bottleneck": run["bottleneck"],
            "cores_busy": cpu / run["seconds"]}  # CPU seconds per second: how many cores the run kept busy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="shipped,selfie")
    ap.add_argument("--frames", type=int, default=48, help="frames of the shipped model's video (x4 for the small one)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("bench-streams"))
    ap.add_argument("--no-fused", action="store_true", help="do not make or measure --fused-io exports")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from aspp_deploy.bench.report import cpu_description
    from aspp_deploy.runtime.engines.ort_engine import OrtEngine
    from aspp_deploy.runtime.segmenter import Segmenter

    cpu, flags = cpu_description()
    print(f"CPU: {cpu} x{os.cpu_count()}; flags: {' '.join(flags)}; ONNX Runtime threads {args.threads}")
    w, h = (int(v) for v in args.size.lower().split("x"))
    args.work.mkdir(parents=True, exist_ok=True)
    fused = not args.no_fused and fused_supported()
    if not args.no_fused and not fused:
        print("note: this checkout's export has no --fused-io: fused rows skipped")
    models = make_models(args.models.split(","), args.work, fused)
    videos = {}
    for name in models:
        base = name.split(" ")[0]
        frames = args.frames * (1 if base == "shipped" else 4)
        video = args.work / f"{base}-{frames}-{w}x{h}.mp4"
        if not video.is_file():
            make_video(video, frames, (w, h), people=base != "shipped")
        videos[name] = (video, frames)
    results: dict = {name: {mode: [] for mode in MODES} for name in models}
    # inference only and sequential: ONNX Runtime's defaults (threads spin between runs: its best
    # back-to-back latency); pipelined: as `predict` opens a stream's model, threads sleep between runs
    segs = {name: Segmenter(OrtEngine(onnx, threads=args.threads)) for name, onnx in models.items()}
    piped = {name: Segmenter(OrtEngine(onnx, threads=args.threads, spinning=False)) for name, onnx in models.items()}
    try:
        for r in range(args.rounds):
            for name, seg in segs.items():
                video, frames = videos[name]
                with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                    results[name]["infer only"].append(infer_only(seg, video, frames))
                    results[name]["infer asleep"].append(infer_only(piped[name], video, frames))
                    results[name]["sequential"].append(sequential(seg, video, Path(tmp)))
                    results[name]["pipelined"].append(pipelined(piped[name], video, Path(tmp), overlay=False))
                    results[name]["+ overlay"].append(pipelined(piped[name], video, Path(tmp), overlay=True))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for seg in [*segs.values(), *piped.values()]:
            seg.close()

    def fps(name: str, mode: str) -> float:
        return statistics.median(m["fps"] for m in results[name][mode])

    def host_ms(name: str, mode: str) -> float:
        return statistics.median(m["ms_per_frame"]["preprocess"] + m["ms_per_frame"]["postprocess"]
                                 for m in results[name][mode])

    print(f"\nFPS on a {w}x{h} H.264 video (median of {args.rounds} interleaved rounds), ONNX Runtime, "
          f"{args.threads} threads:")
    head = f"{'model':<15}{'infer only':>11}{'asleep':>8}{'sequential':>11}{'pipelined':>10}{'+overlay':>9}" \
           f"{'e2e/infer':>10}{'overlay cost':>13}{'pre+post ms':>12}"
    print(head)
    summary: dict = {"cpu": cpu, "flags": flags, "threads": args.threads, "size": [w, h], "models": {}}
    for name in models:
        row = {mode: round(fps(name, mode), 2) for mode in MODES}
        ratio = row["pipelined"] / row["infer only"]
        cost = 1 - row["+ overlay"] / row["pipelined"]
        host = host_ms(name, "pipelined")
        print(f"{name:<15}{row['infer only']:>11.1f}{row['infer asleep']:>8.1f}{row['sequential']:>11.1f}"
              f"{row['pipelined']:>10.1f}"
              f"{row['+ overlay']:>9.1f}{ratio:>10.2f}{100 * cost:>12.0f}%{host:>12.1f}")
        last = results[name]["pipelined"][-1]
        summary["models"][name] = {"fps": row, "e2e_over_infer": round(ratio, 3), "overlay_cost": round(cost, 3),
                                   "host_pre_post_ms": round(host, 2), "frames": videos[name][1],
                                   "pipelined_ms_per_frame": last["ms_per_frame"], "share": last["share"],
                                   "sequential_ms_per_frame": results[name]["sequential"][-1]["ms_per_frame"]}
    print("\nwhere the time goes (pipelined, last round; busy ms per frame per stage, share of the wall time):")
    for name in models:
        last = results[name]["pipelined"][-1]
        parts = ", ".join(f"{k} {v:.1f} ms ({100 * last['share'][k]:.0f}%)" for k, v in last["ms_per_frame"].items())
        print(f"  {name}: {parts}; pace: {last['bottleneck']}; {last['cores_busy']:.2f} of {os.cpu_count()} "
              "cores busy")
    for base in {n.split(" ")[0] for n in models}:
        if f"{base} fused" in models:
            before, after = host_ms(base, "pipelined"), host_ms(f"{base} fused", "pipelined")
            print(f"  {base}: fused I/O host pre+post {before:.1f} -> {after:.1f} ms per frame "
                  f"({100 * (1 - after / before):.0f}% less)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
