"""``aspp-deploy data``: make the synthetic dataset and calibration images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from aspp_deploy.cli._common import console, handle_errors
from aspp_deploy.data.synthetic import write_calibration_folder, write_synthetic_voc

app = typer.Typer(help="Generate data: `synth` (the synthetic VOC-style dataset) and `calib` (calibration images from a disjoint seed stream).", no_args_is_help=True)


@app.command("synth")
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (VOC layout).")] = Path("data/synth"),
    train: Annotated[int, typer.Option(help="Number of training images.")] = 2000,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 200,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
) -> None:
    """Write the deterministic synthetic dataset (train and val splits) in the VOC layout."""
    splits = {k: v for k, v in {"train": train, "val": val}.items() if v > 0}
    with Progress(console=console, transient=True) as progress:
        tasks = {s: progress.add_task(f"generating {s}", total=n) for s, n in splits.items()}
        write_synthetic_voc(out, splits, seed,
                            progress=lambda s, i, n: progress.update(tasks[s], completed=i))
    console.print(f"wrote {sum(splits.values())} images to {out}", highlight=False)


@app.command("calib")
@handle_errors
def calib(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the images to.")] = Path("calibration"),
    count: Annotated[int, typer.Option(help="Number of images.")] = 96,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
) -> None:
    """Write calibration images from a stream disjoint from the train and val splits."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating calibration images", total=count)
        write_calibration_folder(out, count, seed, progress=lambda s, i, n: progress.update(task, completed=i))
    console.print(f"wrote {count} images to {out}", highlight=False)
