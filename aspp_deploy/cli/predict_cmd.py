"""``aspp-deploy predict``: segment your own images with any artifact (a thin layer over ``aspp_deploy.predict``)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import fail, handle_errors
from aspp_deploy.cli._progress import LOG_EVERY_S, working
from aspp_deploy.data.voc import IMAGE_FORMATS
from aspp_deploy.runtime.pipeline import busy_shares


def _backends() -> str:
    from aspp_deploy.backends.registry import BACKENDS

    return ", ".join(BACKENDS)


@handle_errors
def predict_command(
    images: Annotated[Optional[List[str]], typer.Argument(
        help=f"Image files and/or folders of images ({IMAGE_FORMATS}; folders are not searched recursively), "
             "or one stream: a video file, an image sequence ('frames/*.png', frames/%05d.png), a camera "
             "(/dev/video0 or 0), an rtsp:// or http(s):// URL, a gst:...!appsink pipeline.",
        show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", "--onnx", help="The artifact: an ONNX (onnxruntime), an engine (trt), a checkpoint (torch).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help=f"Runtime that runs the model ({_backends()}; default: from --model's suffix, torch for "
             "--checkpoint/--arch).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder for NAME.mask.png (and NAME.overlay.png); for a stream "
                                      "NAME.mask.mov (and NAME.overlay.mp4...).")] = Path("predictions"),
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write the mask blended on the image, "
                                          "with a legend of the classes present; for a stream, an overlay "
                                          "video (H.264, the source's size and frame rate).")] = False,
    alpha: Annotated[float, typer.Option(help="Mask opacity in the overlays.")] = 0.5,
    batch: Annotated[int, typer.Option(help="Images per inference (0: the artifact's static batch, "
                                       "else 4 for a dynamic batch).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda (torch, onnxruntime).")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads (0: library default).")] = 0,
    checkpoint: M.Checkpoint = None,
    trust_code: M.TrustCode = False,
    arch: M.Arch = None,
    arch_args: M.ArchArgs = None,
    weights: M.Weights = None,
    spec: M.Spec = None,
    height: M.Height = 0,
    width: M.Width = 0,
    classes: M.Classes = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write per-image class areas (pixels and "
                                                     "fraction per class) and the outputs as JSON; for a "
                                                     "stream, the run's figures and per-class totals.")] = None,
    mask_video: Annotated[bool, typer.Option("--mask-video/--no-mask-video", help="Stream: write the masks as "
                                             "a lossless video of class ids (PNG frames in palette mode, "
                                             "NAME.mask.mov).")] = True,
    frame_masks: Annotated[bool, typer.Option("--frame-masks", help="Stream: also write each frame's mask PNG "
                                              "(NAME.masks/000042.png).")] = False,
    frame_json: Annotated[bool, typer.Option("--frame-json", help="Stream: write each frame's class areas as "
                                             "a JSON line (NAME.frames.jsonl).")] = False,
    max_frames: Annotated[int, typer.Option(min=0, help="Stream: stop after N frames (0: all; a camera or "
                                            "live stream runs until Ctrl-C).")] = 0,
    drop: Annotated[bool, typer.Option("--drop/--no-drop", help="Live stream (camera, URL): drop the oldest "
                                       "waiting frame when inference falls behind, to stay real-time (every "
                                       "drop is counted); --no-drop processes every frame. Files never "
                                       "drop a frame.")] = True,
    fps: Annotated[float, typer.Option(min=0, help="Frame rate of an image sequence, or of a stream that "
                                       "does not tell its own (0: the source's, else 25).")] = 0.0,
) -> None:
    """Segment your own images, or a video, image sequence, camera or network stream: class-id mask PNGs
    (the model's palette) at each image's size, optional overlays with a class legend, per-image class
    areas (--json); for a stream, a mask video and/or an overlay video, per-frame mask PNGs and JSON
    lines, decoded, segmented and written in a pipeline of threads (PyAV: pip install av).

    Unreadable images are skipped with a warning each; the exit code is then 1."""
    from aspp_deploy.model.sources import code_trusted
    from aspp_deploy.predict import find_images, open_model, predict_images

    stream = _stream_input(images or [])
    stream_only = {"--frame-masks": frame_masks, "--frame-json": frame_json, "--max-frames": max_frames,
                   "--fps": fps, "--no-mask-video": not mask_video, "--no-drop": not drop}
    if stream is None and any(stream_only.values()):
        given = ", ".join(k for k, v in stream_only.items() if v)
        fail(f"{given}: only for a stream (a video, image sequence, camera or URL), not for still images")
    files, notes = ([], []) if stream is not None else find_images([Path(i) for i in images or []])
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    source = M.ModelSourceOptions(checkpoint, arch, arch_args, weights, trust_code)
    spec_options = M.ModelSpecOptions(spec, height, width, classes=classes)
    model_spec = spec_options.build() if spec_options.given else None
    with working("loading the model"), code_trusted(source.trust_code):
        opened = open_model(backend, model, source.options, model_spec, batch, device, threads,
                            pipelined=stream is not None)
    with opened:
        for note in opened.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        console.print(f"{opened.backend} {opened.precision} on {opened.runner.info.device}: {opened.artifact} "
                      f"({opened.preprocess.height}x{opened.preprocess.width}, batch {opened.batch}, "
                      f"{len(opened.classes)} classes)", highlight=False, soft_wrap=True)
        if stream is not None:
            _predict_stream(opened, stream, out, overlay, mask_video, frame_masks, frame_json, alpha, drop,
                            max_frames, fps, json_out)
            return
        warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
        if console.is_terminal and len(files) > 1:
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), console=console, transient=True) as progress:
                task = progress.add_task("predicting", total=len(files))
                summary = predict_images(opened, files, out, overlay=overlay, alpha=alpha, warn=warn,
                                         progress=lambda i, n: progress.update(task, completed=i))
        else:  # redirected: a line every LOG_EVERY_S seconds instead of a bar
            summary = predict_images(opened, files, out, overlay=overlay, alpha=alpha, warn=warn,
                                     progress=_progress_lines())
    _print_summary(summary)
    write_json(json_out, summary)
    if summary["failed"]:
        names = ", ".join(Path(f["input"]).name for f in summary["failed"][:5])
        more = f" and {len(summary['failed']) - 5} more" if len(summary["failed"]) > 5 else ""
        fail(f"{len(summary['failed'])} of {len(files)} image(s) could not be read ({names}{more}): "
             "see the warnings above")


def _stream_input(inputs: List[str]) -> Optional[str]:
    """The one stream among ``inputs`` (None: they are still images); several inputs with a stream among
    them are refused."""
    from aspp_deploy.runtime.video import is_stream

    def streamish(text: str) -> bool:
        return not Path(text).is_dir() and not (Path(text).is_file() and not is_stream(text)) and is_stream(text)

    streams = [i for i in inputs if streamish(i)]
    if not streams:
        return None
    if len(inputs) > 1:
        fail(f"give one stream at a time ({streams[0]}), not with other inputs")
    return streams[0]


def _predict_stream(opened, stream: str, out: Path, overlay: bool, mask_video: bool, frame_masks: bool,
                    frame_json: bool, alpha: float, drop: bool, max_frames: int, fps: float,
                    json_out: Optional[Path]) -> None:
    from aspp_deploy.predict import predict_stream
    from aspp_deploy.runtime.app import StreamOutputs

    outputs = StreamOutputs(mask_video=mask_video, overlay_video=overlay, frame_masks=frame_masks,
                            frame_json=frame_json)
    if not outputs.any():
        fail("nothing to write: --no-mask-video without --overlay, --frame-masks or --frame-json")
    start = functools.partial(predict_stream, opened, stream, out, outputs, alpha=alpha, drop_late=drop,
                            max_frames=max_frames, fps=fps or None)
    if console.is_terminal:  # one live line: frames, FPS, each stage's share, drops
        console.print("[dim]Ctrl-C stops and keeps what was written[/]", highlight=False)
        with console.status(f"opening {stream}") as status:
            summary = start(progress=lambda s: status.update(f"{stream}: {_stream_figures(s.to_dict())}"))
    else:  # redirected: a line every LOG_EVERY_S seconds
        last = [time.monotonic()]

        def report(stats) -> None:
            if time.monotonic() - last[0] >= LOG_EVERY_S:
                last[0] = time.monotonic()
                console.print(f"{stream}: {_stream_figures(stats.to_dict())}", highlight=False, soft_wrap=True)

        summary = start(progress=report)
    run = summary["stream"]
    rows = [r for r in summary["classes"] if r["pixels"]]
    if rows:
        table = Table(title=f"{run['frames_out']} frame(s): classes found")
        table.add_column("class")
        table.add_column("frames", justify="right")
        table.add_column("share of all pixels", justify="right")
        for row in rows:
            table.add_row(row["class"], str(row["frames"]), f"{100 * row['fraction']:.1f}%")
        out_console.print(table)
    written = ", ".join(Path(p).name for p in summary["outputs"].values())
    out_console.print(f"{stream} -> {out}/ ({written}): {_stream_figures(run)}", highlight=False, soft_wrap=True)
    if run["stopped_by"] == "interrupt":
        console.print(f"[yellow]note:[/] stopped by Ctrl-C; {run['unfinished']} frame(s) in flight were not "
                      "written", highlight=False, soft_wrap=True)
    write_json(json_out, summary)


def _stream_figures(run: dict) -> str:
    """``120 frames in 4.1 s, 29.3 FPS; inference 81% of the time (the pace), decode 12%, ...; 3 dropped``"""
    dropped = f"; {run['dropped']} dropped to stay real-time" if run["dropped"] else ""
    return (f"{run['frames_out']} frame(s) in {run['seconds']:.1f} s, {run['fps']:.1f} FPS; {busy_shares(run)} "
            f"(pace: {run['bottleneck']}){dropped}")


def _progress_lines():
    last = [time.monotonic()]

    def report(i: int, n: int) -> None:
        now = time.monotonic()
        if i < n and now - last[0] >= LOG_EVERY_S:
            last[0] = now
            console.print(f"predicting: {i}/{n} image(s)", highlight=False)

    return report


def _print_summary(summary: dict) -> None:
    from aspp_deploy.predict import class_totals

    if summary["count"]:
        table = Table(title=f"{summary['count']} image(s): classes found")
        table.add_column("class")
        table.add_column("images", justify="right")
        table.add_column("share of all pixels", justify="right")
        for row in class_totals(summary):
            if row["pixels"]:
                table.add_row(row["class"], str(row["images"]), f"{100 * row['fraction']:.1f}%")
        out_console.print(table)
    ms = summary["ms_per_image"]
    out_console.print(f"{summary['count']} image(s) -> {summary['out']}/ in {summary['seconds']:.1f} s: "
                      f"{ms['total']:.1f} ms per image (load + preprocess {ms['load_preprocess']:.1f}, "
                      f"inference {ms['inference']:.1f}, masks/overlays {ms['postprocess_write']:.1f})",
                      highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("predict", cls=Command)(predict_command)
