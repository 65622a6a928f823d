"""``aspp-deploy eval``: mIoU of a checkpoint or artifact on a VOC-style folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress
from rich.table import Table

from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._common import Command, LineProgress, handle_errors, out_console, progress, write_json


class EvalBackend(str, Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"


def _progress_callbacks(bar: Progress | LineProgress, label: str):
    gen = bar.add_task("generating the synthetic validation split", total=None, visible=False)
    task = bar.add_task(label, total=None)

    def on_generate(_split: str, i: int, n: int) -> None:
        bar.update(gen, completed=i, total=n, visible=True)

    def on_eval(i: int, n: int) -> None:
        bar.update(task, completed=i, total=n)

    return on_generate, on_eval


def register(app: typer.Typer) -> None:
    @app.command("eval", cls=Command)
    @handle_errors
    def eval_command(
        backend: Annotated[EvalBackend, typer.Option(help="Which runtime runs the model.")] = EvalBackend.torch,
        checkpoint: M.Checkpoint = None,
        arch: M.Arch = None,
        arch_args: M.ArchArgs = None,
        weights: M.Weights = None,
        spec: M.Spec = None,
        height: M.Height = 0,
        width: M.Width = 0,
        classes: M.Classes = None,
        model: Annotated[Optional[Path], typer.Option("--model", "--onnx", help="ONNX model (onnxruntime, openvino backends).")] = None,
        data: Annotated[Optional[Path], typer.Option(help="VOC-style folder (default: the synthetic validation split, generated if absent).")] = None,
        split: Annotated[str, typer.Option(help="Split list under ImageSets/Segmentation.")] = "val",
        limit: Annotated[int, typer.Option(help="Evaluate only the first N images (0: all).")] = 0,
        device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
        threads: Annotated[int, typer.Option(help="CPU threads (0: library default).")] = 0,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    ) -> None:
        """Report mIoU, pixel accuracy and per-class IoU on a VOC-style folder."""
        from aspp_deploy.eval.evaluate import check_dataset_classes, ensure_default_data, evaluate

        with progress() as bar:
            on_generate, on_eval = _progress_callbacks(bar, f"evaluating ({backend.value})")
            model_spec = M.build_spec(spec, height, width, classes=classes)
            runner, pre, class_names = _open_runner(backend, (checkpoint, arch, arch_args, weights), model_spec,
                                                    model, device, threads)
            root = data if data is not None else ensure_default_data(on_generate)
            with runner:
                check_dataset_classes(root, class_names)  # refuse a class-count mismatch before any image
                result = evaluate(runner, root, pre, class_names, split, limit=limit or None, progress=on_eval)
        table = Table(title=f"{backend.value} on {root} ({split}, {result.num_images} images)")
        table.add_column("class")
        table.add_column("IoU", justify="right")
        for name, iou in result.per_class_iou.items():
            table.add_row(name, "n/a" if iou is None else f"{iou:.4f}")
        table.add_row("[bold]mIoU[/]", f"[bold]{result.miou:.4f}[/]")
        table.add_row("pixel accuracy", f"{result.pixel_accuracy:.4f}")
        out_console.print(table)
        write_json(json_out, {"backend": backend.value, "artifact": runner.info.artifact,
                              "data": str(root), "split": split, "input_size": [pre.height, pre.width],
                              **result.to_dict()})


def _open_runner(backend: EvalBackend, source_options: tuple, spec, model: Optional[Path],
                 device: str, threads: int):
    if backend is EvalBackend.torch:
        from aspp_deploy.backends.torch_backend import open_torch_source

        runner, resolved = open_torch_source(source_options, spec, device, threads)
        return runner, resolved.preprocess, resolved.classes
    from aspp_deploy.backends.registry import check_artifact_kind, open_runner, require_backend
    from aspp_deploy.errors import InputError
    from aspp_deploy.export.manifest import read_onnx_manifest

    if model is None:
        raise InputError(f"--backend {backend.value} needs --model MODEL.onnx (make one with `aspp-deploy export`)")
    check_artifact_kind(backend.value, model)
    require_backend(backend.value)
    manifest = read_onnx_manifest(model)
    runner = open_runner(backend.value, model, device=device, threads=threads)
    return runner, manifest.preprocess(), manifest.classes
