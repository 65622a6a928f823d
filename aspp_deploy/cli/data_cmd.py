"""``aspp-deploy data``: make the synthetic dataset and calibration images, or write real photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aspp_deploy.cli._click import Command, Group
from aspp_deploy.cli._console import console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._progress import progress
from aspp_deploy.data.synthetic import write_calibration_folder, write_synthetic_voc
from aspp_deploy.errors import InputError
from aspp_deploy.io import ensure_writable

app = typer.Typer(cls=Group, help="Generate data: `synth` (the synthetic VOC-style dataset), `calib` (calibration images from a disjoint seed stream) and `photos` (real photos that installed packages ship).", no_args_is_help=True)


@app.command("synth", cls=Command)
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (VOC layout).")] = Path("data/synth"),
    train: Annotated[int, typer.Option(help="Number of training images.")] = 2000,
    val: Annotated[int, typer.Option(help="Number of validation images.")] = 200,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write what was written as JSON.")] = None,
) -> None:
    """Write the deterministic synthetic dataset (train and val splits) in the VOC layout."""
    splits = {k: v for k, v in {"train": train, "val": val}.items() if v > 0}
    if not splits:
        raise InputError("--train and --val are both 0: nothing to write")
    ensure_writable(out)
    with progress() as bar:
        tasks = {s: bar.add_task(f"generating {s}", total=n) for s, n in splits.items()}
        write_synthetic_voc(out, splits, seed, progress=lambda s, i, n: bar.update(tasks[s], completed=i))
    console.print(f"wrote {sum(splits.values())} images to {out}", highlight=False)
    write_json(json_out, {"command": "data synth", "out": str(out), "seed": seed, "images": splits,
                          "layout": {"images": str(out / "JPEGImages"), "masks": str(out / "SegmentationClass"),
                                     "splits": {s: str(out / "ImageSets" / "Segmentation" / f"{s}.txt")
                                                for s in splits}}})


@app.command("calib", cls=Command)
@handle_errors
def calib(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the images to.")] = Path("calibration"),
    count: Annotated[int, typer.Option(help="Number of images.")] = 96,
    seed: Annotated[int, typer.Option(help="Dataset seed.")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write what was written as JSON.")] = None,
) -> None:
    """Write calibration images from a stream disjoint from the train and val splits."""
    if count < 1:
        raise InputError(f"--count {count} is impossible: write at least 1 image")
    ensure_writable(out)
    with progress() as bar:
        task = bar.add_task("generating calibration images", total=count)
        write_calibration_folder(out, count, seed, progress=lambda s, i, n: bar.update(task, completed=i))
    console.print(f"wrote {count} images to {out}", highlight=False)
    write_json(json_out, {"command": "data calib", "out": str(out), "seed": seed, "images": count})


@app.command("photos", cls=Command)
@handle_errors
def photos(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the photos to.")] = Path("data/photos"),
    max_side: Annotated[int, typer.Option(help="Longest side of each photo in pixels.")] = 512,
    people: Annotated[bool, typer.Option("--people", help="Only the photos that show a person (for person segmenters).")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write what was written as JSON.")] = None,
) -> None:
    """Write real photos shipped by installed packages (matplotlib; scikit-image when installed), with their
    sources and licences in PHOTOS.md: images without masks, to calibrate on and to measure agreement with."""
    from aspp_deploy.data.photos import skimage_available, write_photos

    if max_side < 32:
        raise InputError(f"--max-side {max_side} is too small: use 32 or more")
    paths = write_photos(out, max_side, people)
    console.print(f"wrote {len(paths)} photos to {out} (sources and licences: {out / 'PHOTOS.md'})", highlight=False)
    if not skimage_available():
        console.print("note: scikit-image is not installed; with it (pip install scikit-image) there are more",
                      highlight=False)
    write_json(json_out, {"command": "data photos", "out": str(out), "images": [str(p) for p in paths]})
