"""``aspp-deploy train``."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import command_line, console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.voc import voc_palette
from aspp_deploy.errors import DatasetError
from aspp_deploy.io import read_json_object


class Backbone(str, Enum):
    resnet18 = "resnet18"
    resnet34 = "resnet34"
    resnet50 = "resnet50"


class Head(str, Enum):
    v3 = "v3"
    v2 = "v2"


def _dataset_classes(data: Path, num_classes: int | None) -> tuple[list[str], list[list[int]]]:
    meta = data / "dataset.json"
    if meta.is_file():
        d = read_json_object(meta, "")
        classes, palette = d.get("classes"), d.get("palette")
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise DatasetError(f"{meta}: 'classes' must list at least two class names (background first)")
        if not isinstance(palette, list) or len(palette) < len(classes) or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in palette):
            raise DatasetError(f"{meta}: 'palette' must give an RGB triple of 0..255 for every class")
        classes, palette = list(classes), [list(c) for c in palette]
    elif num_classes:
        classes = ["background"] + [f"class_{i}" for i in range(1, num_classes)]
        palette = [list(c) for c in voc_palette(num_classes)]
    else:
        raise DatasetError(f"{data} has no dataset.json naming its classes: pass --num-classes")
    if num_classes and num_classes != len(classes):
        raise DatasetError(f"--num-classes {num_classes} but {meta} lists {len(classes)} classes")
    return classes, palette


def _check_train_options(steps: int, batch: int, crop: int, size: int, lr: float, output_stride: int,
                         aspp_depth: int) -> None:
    """Refuse, before any data is read, the settings training cannot run with."""
    if steps < 1:
        raise DatasetError(f"--steps {steps} is impossible: train at least 1 step")
    if batch < 2:
        raise DatasetError(f"--batch {batch} is impossible: BatchNorm needs at least 2 images per batch in training")
    if crop < 32:
        raise DatasetError(f"--crop {crop} is too small: the backbone needs at least 32x32 pixels")
    if not 32 <= size <= 16384:
        raise DatasetError(f"--size {size} is impossible: use 32..16384 pixels")
    if not lr > 0:
        raise DatasetError(f"--lr {lr} is impossible: the learning rate must be above 0")
    if output_stride not in (8, 16):
        raise DatasetError(f"--output-stride {output_stride} is not supported: use 8 or 16")
    if aspp_depth < 1:
        raise DatasetError(f"--aspp-depth {aspp_depth} is impossible: use 1 channel or more")


@handle_errors
def train(
    data: Annotated[Path, typer.Option("--data", help="VOC-style folder with a train split.")] = Path("data/synth"),
    out: Annotated[Path, typer.Option("--out", help="Run folder (last.pt, model.pt).")] = Path("runs/train"),
    backbone: Annotated[Backbone, typer.Option(help="Backbone.")] = Backbone.resnet18,
    output_stride: Annotated[int, typer.Option(help="Output stride: 8 or 16.")] = 16,
    rates: Annotated[str, typer.Option(help="Atrous rates, comma separated (default 6,12,18 at OS16, 12,24,36 at OS8).")] = "",
    aspp_depth: Annotated[int, typer.Option(help="Channels per ASPP branch.")] = 256,
    head: Annotated[Head, typer.Option(help="v3 (ASPP with BN and image pooling) or v2 (summed atrous convs).")] = Head.v3,
    num_classes: Annotated[int, typer.Option(help="Classes incl. background (default: from dataset.json).")] = 0,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2400,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 8,
    crop: Annotated[int, typer.Option(help="Square training crop in pixels.")] = 256,
    size: Annotated[int, typer.Option(help="Model input size recorded for inference (square).")] = 512,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed for init, crops and dropout.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0: PyTorch's default).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the run's files, settings and final loss as JSON.")] = None,
) -> None:
    """Train a DeepLabV3/ASPP model on a VOC-style folder (CPU or CUDA, resumable)."""
    import torch

    from aspp_deploy.model.deeplab import ModelConfig
    from aspp_deploy.train import TrainSettings
    from aspp_deploy.train import train as run_train

    _check_train_options(steps=steps, batch=batch, crop=crop, size=size, lr=lr,
                         output_stride=output_stride, aspp_depth=aspp_depth)
    if threads:
        torch.set_num_threads(threads)
    classes, palette = _dataset_classes(data, num_classes or None)
    try:
        config = ModelConfig(num_classes=len(classes), backbone=backbone.value,
                             output_stride=output_stride, aspp_depth=aspp_depth, head=head.value,
                             atrous_rates=tuple(int(r) for r in rates.split(",") if r.strip()))
    except ValueError as exc:
        raise DatasetError(f"bad model options: {exc}") from None
    settings = TrainSettings(steps=steps, batch=batch, crop=crop, lr=lr, seed=seed)
    started = time.perf_counter()
    final = run_train(data, out, config, settings, classes, palette, Preprocess(size, size),
                      device=device, resume=resume, command=command_line(),
                      log=lambda m: console.print(m, highlight=False))
    console.print(f"wrote {final}", highlight=False)
    if json_out is not None:
        write_json(json_out, _train_summary(out, final, data, config, settings, classes, device,
                                            time.perf_counter() - started))


def _train_summary(out: Path, final: Path, data: Path, config, settings, classes: list[str], device: str,
                   seconds: float) -> dict:
    """What ``train --json`` writes: the files, the model and training settings, the loss at the end."""
    from dataclasses import asdict

    from aspp_deploy.train import resolve_device

    history_file = out / "loss_history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    tail = history[-50:]
    return {"command": command_line(), "checkpoint": str(final), "state": str(out / "last.pt"),
            "loss_history": str(history_file), "data": str(data), "classes": classes,
            "model": config.to_dict(), "settings": asdict(settings), "device": str(resolve_device(device)),
            "steps": len(history), "final_loss": sum(tail) / len(tail) if tail else None,
            "seconds": round(seconds, 3)}


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(train)
