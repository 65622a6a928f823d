"""``aspp-deploy predict``: segment your own images with any artifact (a thin layer over ``aspp_deploy.predict``)."""

from __future__ import annotations

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


def _backends() -> str:
    from aspp_deploy.backends.registry import BACKENDS

    return ", ".join(BACKENDS)


@handle_errors
def predict_command(
    images: Annotated[Optional[List[Path]], typer.Argument(
        help=f"Image files and/or folders of images ({IMAGE_FORMATS}; folders are not searched recursively).",
        show_default=False)] = None,
    model: Annotated[Optional[Path], typer.Option(
        "--model", "--onnx", help="The artifact: an ONNX (onnxruntime), an engine (trt), a checkpoint (torch).")] = None,
    backend: Annotated[Optional[str], typer.Option(
        help=f"Runtime that runs the model ({_backends()}; default: from --model's suffix, torch for "
             "--checkpoint/--arch).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(help="Folder for NAME.mask.png (and NAME.overlay.png).")] = Path("predictions"),
    overlay: Annotated[bool, typer.Option("--overlay", help="Also write the mask blended on the image, "
                                          "with a legend of the classes present.")] = False,
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
                                                     "fraction per class) and the outputs as JSON.")] = None,
) -> None:
    """Segment your own images: class-id mask PNGs (the model's palette) at each image's size,
    optional overlays with a class legend, per-image class areas (--json).

    Unreadable images are skipped with a warning each; the exit code is then 1."""
    from aspp_deploy.model.sources import code_trusted
    from aspp_deploy.predict import find_images, open_model, predict_images

    files, notes = find_images(images or [])
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    source = M.ModelSourceOptions(checkpoint, arch, arch_args, weights, trust_code)
    spec_options = M.ModelSpecOptions(spec, height, width, classes=classes)
    model_spec = spec_options.build() if spec_options.given else None
    with working("loading the model"), code_trusted(source.trust_code):
        opened = open_model(backend, model, source.options, model_spec, batch, device, threads)
    with opened:
        for note in opened.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
        console.print(f"{opened.backend} {opened.precision} on {opened.runner.info.device}: {opened.artifact} "
                      f"({opened.preprocess.height}x{opened.preprocess.width}, batch {opened.batch}, "
                      f"{len(opened.classes)} classes)", highlight=False, soft_wrap=True)
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
