"""``python -m aspp_deploy.runtime``: build, plan, segment, selftest - on the device, without torch or onnx.

    python -m aspp_deploy.runtime selftest                       # files + bit-identical preprocessing
    python -m aspp_deploy.runtime plan  --precision fp16         # the path for this TensorRT, no build
    python -m aspp_deploy.runtime build --precision fp16         # engines/model.fp16.engine (+ .json)
    python -m aspp_deploy.runtime segment --engine engines/model.fp16.engine --input images/ --out overlays/
    python -m aspp_deploy.runtime segment --input images/     # no TensorRT here: OpenVINO or ONNX Runtime on the CPU

Every failure is one ``error:`` line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from aspp_deploy.errors import AsppDeployError, InputError, MissingDependencyError
from aspp_deploy.runtime.trt.build import DEFAULT_WORKSPACE_MB

PRECISIONS = ("fp32", "fp16", "int8")
CUDA_BACKENDS = ("auto", "cuda-python", "pycuda")
SEGMENT_RUNTIMES = ("auto", "tensorrt", "openvino", "onnxruntime")
DEFAULT_ONNX = Path("models/model.onnx")
DEFAULT_CALIB = Path("calibration/images")


def _say(message: str) -> None:
    print(message, flush=True)


def _installed_version() -> tuple:
    from aspp_deploy.runtime.trt.plan import parse_version
    from aspp_deploy.runtime.trt.runtime import import_tensorrt

    trt = import_tensorrt()  # MissingDependencyError: one line naming TensorRT and how to get it
    return parse_version(trt.__version__), str(trt.__version__)


def _choice(args: argparse.Namespace, version: tuple):
    from aspp_deploy.runtime.builder import choose_build, read_entries

    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise InputError(f"ONNX model not found: {onnx} (run from the bundle folder, or give --onnx)")
    calib = args.calib if args.calib is not None else (DEFAULT_CALIB if DEFAULT_CALIB.is_dir() else None)
    models = read_entries(onnx.parent)
    choice = choose_build(models, onnx.name, args.precision, version, legacy_int8=args.legacy_int8,
                          can_calibrate=calib is not None or (args.calib_cache is not None and args.calib_cache.is_file()))
    return choice, calib


def _engine_path(args: argparse.Namespace) -> Path:
    return args.out or Path("engines") / f"{Path(args.onnx).stem}.{args.precision}.engine"


def _calib_cache(args: argparse.Namespace, engine: Path) -> Path:
    return args.calib_cache or engine.with_suffix(".calib")


def cmd_plan(args: argparse.Namespace) -> int:
    from aspp_deploy.runtime.builder import trtexec_line
    from aspp_deploy.runtime.trt.plan import parse_version

    version = parse_version(args.trt_version) if args.trt_version else _installed_version()[0]
    choice, _ = _choice(args, version)
    engine = _engine_path(args)
    line = trtexec_line(choice, str(Path(args.onnx).parent), str(engine), str(_calib_cache(args, engine)),
                        args.workspace_mb)
    payload = {"tensorrt": f"{version[0]}.{version[1]}", **choice.to_dict(), "engine": str(engine), "trtexec": line}
    if args.json:
        _say(json.dumps(payload, indent=2))
        return 0
    _say(f"TensorRT {version[0]}.{version[1]}, {choice.precision}: build {choice.onnx}")
    for note in payload["notes"]:
        _say(f"  {note}")
    _say(f"trtexec equivalent: {line}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from aspp_deploy.runtime.builder import build_engine, trtexec_line

    version, full = _installed_version()
    choice, calib = _choice(args, version)
    engine = _engine_path(args)
    cache = _calib_cache(args, engine)
    _say(f"TensorRT {full}: building {choice.onnx} for {choice.precision}")
    for note in choice.to_dict()["notes"]:
        _say(f"  {note}")
    _say(f"trtexec equivalent: {trtexec_line(choice, str(Path(args.onnx).parent), str(engine), str(cache), args.workspace_mb)}")
    engine.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_engine(choice, Path(args.onnx).parent, engine, calib_dir=calib, calib_cache=cache,
                            calib_size=args.calib_size, workspace_mb=args.workspace_mb, cuda=args.cuda, log=_say)
    _say(f"built {engine} ({manifest['build_seconds']} s) and {engine.name}.json")
    return 0


def _default_engine() -> Optional[Path]:
    """The bundle's primary engine (``bundle.json``) when it has been built, else None."""
    try:
        info = json.loads(Path("bundle.json").read_text())
        engine = Path(info["engines"][info["primary"]])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return engine if engine.is_file() else None


def open_segmenter(args: argparse.Namespace):
    """``(segmenter, why)``: TensorRT when it is installed and there is an engine (``--engine``, else the
    bundle's built primary engine), else the CPU with ``--onnx``: OpenVINO when it is installed, else
    ONNX Runtime; ``why`` says why the fallback was taken (None for TensorRT)."""
    from aspp_deploy.runtime.trt.runtime import TRT_INSTALL_HINT, tensorrt_installed

    runtime = getattr(args, "runtime", "auto")
    why = None
    if runtime in ("auto", "tensorrt"):
        engine = args.engine or (_default_engine() if runtime == "auto" else None)
        if runtime == "tensorrt" or (tensorrt_installed() and engine is not None):
            from aspp_deploy.runtime.segmenter import Segmenter

            if engine is None:
                raise InputError("--runtime tensorrt needs --engine ENGINE (build one with "
                                 "`python -m aspp_deploy.runtime build`)")
            _installed_version()  # without TensorRT nothing below can run: say so first
            try:
                return Segmenter(engine, cuda=args.cuda), None
            except MissingDependencyError as exc:
                if runtime == "tensorrt":
                    raise
                why = str(exc)
        elif not tensorrt_installed():
            why = TRT_INSTALL_HINT.split(":")[0]
        else:
            why = "no TensorRT engine given or built (`python -m aspp_deploy.runtime build`)"
    from aspp_deploy.runtime.ort_segmenter import ORT_INSTALL_HINT, OrtSegmenter, onnxruntime_installed
    from aspp_deploy.runtime.ov_segmenter import OpenVinoSegmenter, openvino_installed

    if runtime == "openvino" or (runtime == "auto" and openvino_installed()):
        cache = Path("engines") / "openvino-cache" if Path("bundle.json").is_file() else None  # in a bundle
        return OpenVinoSegmenter(args.onnx, threads=args.threads, cache_dir=cache), why  # fastest CPU engine measured
    if not onnxruntime_installed():
        if runtime == "onnxruntime":
            raise MissingDependencyError("ONNX Runtime is not installed: " + ORT_INSTALL_HINT)
        reason = why if why and not why.startswith("TensorRT is not installed") else TRT_INSTALL_HINT
        raise MissingDependencyError(f"{reason}; the CPU fallback, ONNX Runtime, is not installed either: "
                                     f"{ORT_INSTALL_HINT}")
    # a stream runs in the pipeline: ONNX Runtime's threads must not busy-wait between runs there
    return OrtSegmenter(args.onnx, threads=args.threads, spinning=not getattr(args, "pipelined", False)), why


def cmd_segment(args: argparse.Namespace) -> int:
    from aspp_deploy.runtime.app import StreamOutputs, find_inputs, segment_images, segment_stream
    from aspp_deploy.runtime.pipeline import busy_shares

    kind, files = find_inputs(args.input)
    args.pipelined = kind == "stream"
    seg, why = open_segmenter(args)
    with seg:
        _say(f"segmenting with {seg.description}" + (f" ({why})" if why else ""))
        where = {"openvino": "OpenVINO on the CPU", "onnxruntime": "ONNX Runtime on the CPU"}.get(
            getattr(seg, "backend", ""), "TensorRT")
        if kind == "stream":
            outputs = StreamOutputs(mask_video=True, overlay_video=not args.no_overlay_video,
                                    frame_json=args.frame_json)
            summary = segment_stream(seg, files[0], args.out, outputs, alpha=args.alpha, drop_late=not args.no_drop,
                                     max_frames=args.max_frames or args.limit, fps=args.fps or None,
                                     progress=_stream_progress(files[0]))
            run = summary["stream"]
            _say(f"{run['frames_out']} frame(s) -> {args.out} at {run['fps']} FPS on {where} "
                 f"({busy_shares(run)}{'; ' + str(run['dropped']) + ' dropped' if run['dropped'] else ''})")
            return 0
        summary = segment_images(seg.predict_batch, files, args.out, seg.palette, args.alpha,
                                 args.batch or seg.max_batch, _say, classes=seg.classes or None)
    _say(f"{summary['count']} image(s) -> {args.out} "
         f"({summary['ms_per_image']} ms each on {where}, preprocessing + inference + post-processing)")
    return 0


def _stream_progress(name: str):
    last = [time.monotonic()]

    def report(stats: Any) -> None:
        if time.monotonic() - last[0] >= 5.0:
            last[0] = time.monotonic()
            _say(f"{name}: {stats.frames_out} frame(s), {stats.fps:.1f} FPS, {stats.dropped} dropped")

    return report


def cmd_selftest(args: argparse.Namespace) -> int:
    from aspp_deploy.runtime.selftest import selftest

    report: Dict[str, Any] = selftest(args.bundle)
    failed: List[str] = list(report["files"])
    for item in report["preprocessing"]:
        if not item["identical"]:
            failed.append(f"preprocessing of {item['file']} differs from the toolkit's (channel means moved by "
                          f"up to {item['max_channel_mean_drift']:.3g}): Pillow's resampling differs between "
                          "releases, use the bundle's Pillow release where this Python allows it")
    here, made = report["here"], report["bundle_made_with"]
    if args.json:
        _say(json.dumps(report, indent=2))
    else:
        problems = len(report["files"])
        _say(f"files: {'ok' if not problems else str(problems) + ' problem(s)'}")
        same = sum(1 for i in report["preprocessing"] if i["identical"])
        _say(f"preprocessing: {same}/{len(report['preprocessing'])} image(s) bit-identical to the toolkit "
             f"(here numpy {here['numpy']}, Pillow {here['pillow']}; bundle made with numpy "
             f"{made.get('numpy', '?')}, Pillow {made.get('pillow', '?')})")
    for problem in failed:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if failed else 0


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="the FP32 ONNX (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16", help="engine precision (default: %(default)s)")
    p.add_argument("--legacy-int8", action="store_true", help="INT8 by calibrating the FP32 ONNX here (8.x-10.x)")
    p.add_argument("--calib", type=Path, default=None, help=f"calibration images (default: {DEFAULT_CALIB} if present)")
    p.add_argument("--calib-size", type=int, default=0, help="use the first N calibration images (0: all)")
    p.add_argument("--calib-cache", type=Path, default=None, help="INT8 calibration cache (default: ENGINE.calib)")
    p.add_argument("--out", type=Path, default=None, help="engine path (default: engines/MODEL.PRECISION.engine)")
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace limit in MiB")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m aspp_deploy.runtime",
                                  description="The aspp-deploy Jetson runtime: build engines and segment, torch-free.")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build a TensorRT engine for this device's TensorRT version")
    _build_args(p)
    p.add_argument("--cuda", choices=CUDA_BACKENDS, default="auto", help="CUDA Python package")
    p.set_defaults(run=cmd_build)
    p = sub.add_parser("plan", help="print the build path and trtexec command for a TensorRT version (no build)")
    _build_args(p)
    p.add_argument("--trt-version", default=None, help="e.g. 8.5, 10.3 (default: the installed TensorRT)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_plan)
    p = sub.add_parser("segment", help="segment a folder of images, one image, or a stream (video file, image "
                                        "sequence, camera, rtsp/http URL, gst: pipeline); write overlays and masks "
                                        "(TensorRT, else OpenVINO or ONNX Runtime on the CPU)")
    p.add_argument("--engine", type=Path, default=None, help="engine built by `build` (its .json beside it; default: "
                                                             "the bundle's primary engine once built)")
    p.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="ONNX run on the CPU when TensorRT is absent "
                                                                 "(default: %(default)s)")
    p.add_argument("--runtime", choices=SEGMENT_RUNTIMES, default="auto",
                   help="auto: TensorRT when installed and an engine exists, else the CPU: OpenVINO when installed, "
                        "else ONNX Runtime")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of OpenVINO / ONNX Runtime (0: its default)")
    p.add_argument("--input", required=True,
                   help="folder of images, an image, or a stream: a video file, 'frames/*.png', /dev/video0, "
                        "rtsp://..., http://..., gst:...!appsink (streams need PyAV: pip3 install av; gst: needs "
                        "OpenCV with GStreamer, as JetPack's python3-opencv)")
    p.add_argument("--out", type=Path, default=Path("overlays"), help="output folder (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5, help="mask opacity in the overlays")
    p.add_argument("--batch", type=int, default=0, help="images per inference (default: the engine's batch)")
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)  # the old name of --max-frames
    p.add_argument("--max-frames", type=int, default=0, help="stream: stop after N frames (0: all; a camera runs "
                                                            "until Ctrl-C)")
    p.add_argument("--no-drop", action="store_true", help="live stream: process every frame instead of dropping "
                                                          "the oldest waiting one when inference falls behind")
    p.add_argument("--no-overlay-video", action="store_true", help="stream: write the mask video only")
    p.add_argument("--frame-json", action="store_true", help="stream: each frame's class areas as JSON lines")
    p.add_argument("--fps", type=float, default=0.0, help="frame rate of an image sequence (default 25)")
    p.add_argument("--cuda", choices=CUDA_BACKENDS, default="auto", help="CUDA Python package")
    p.set_defaults(run=cmd_segment)
    p = sub.add_parser("selftest", help="check the bundle's files and bit-identical preprocessing (no TensorRT)")
    p.add_argument("--bundle", type=Path, default=Path("."), help="bundle folder (default: current folder)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_selftest)
    return top


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except AsppDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except PermissionError as exc:
        print(f"error: permission denied: {exc.filename or exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
