"""``aspp-deploy train``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from aspp_deploy.cli._common import command_line, console, handle_errors
from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.data.voc import voc_palette
from aspp_deploy.errors import DatasetError


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
        d = json.loads(meta.read_text())
        classes, palette = list(d["classes"]), [list(c) for c in d["palette"]]
    elif num_classes:
        classes = ["background"] + [f"class_{i}" for i in range(1, num_classes)]
        palette = [list(c) for c in voc_palette(num_classes)]
    else:
        raise DatasetError(f"{data} has no dataset.json naming its classes: pass --num-classes")
    if num_classes and num_classes != len(classes):
        raise DatasetError(f"--num-classes {num_classes} but {meta} lists {len(classes)} classes")
    return classes, palette


def register(app: typer.Typer) -> None:
    @app.command()
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
    ) -> None:
        """Train a DeepLabV3/ASPP model on a VOC-style folder (CPU or CUDA, resumable)."""
        import torch

        from aspp_deploy.model.deeplab import ModelConfig
        from aspp_deploy.train import TrainSettings
        from aspp_deploy.train import train as run_train

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
        final = run_train(data, out, config, settings, classes, palette, Preprocess(size, size),
                          device=device, resume=resume, command=command_line(),
                          log=lambda m: console.print(m, highlight=False))
        console.print(f"wrote {final}", highlight=False)
