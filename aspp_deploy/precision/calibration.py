"""Which images ``quantize`` calibrates on and which it measures accuracy on: the host's side of
calibration (the portable feeder, ``CalibrationData``, is ``aspp_deploy.runtime.calibration``).
A calibration folder that shares a file (by name or by content) with the validation split is
refused: calibrating on the images you evaluate on flatters the accuracy figures."""

from __future__ import annotations

from pathlib import Path

from aspp_deploy.data.images import from_images, open_data
from aspp_deploy.eval import evaluate as evaluation  # looked up when called (tests stand in for them)
from aspp_deploy.io import sha256_file
from aspp_deploy.runtime.calibration import CalibrationFolderError, calibration_files


def check_disjoint_from_val(files: list[Path], data_root, split: str = "val") -> None:
    """Refuse calibration files that share a file name (stem) or contents with ``split`` (of a VOC
    folder), or with the images of a folder without masks (``data_root``: a path or a ``DataSource``)."""
    ds = open_data(data_root, split)
    where = f"the {split} split of {ds}" if ds.labelled else f"the accuracy images of {ds}"
    val_stems = {s.image.stem for s in ds.samples}
    by_name = [p.name for p in files if p.stem in val_stems]
    if by_name:
        raise CalibrationFolderError(
            f"{len(by_name)} calibration image(s) share a name with {where} "
            f"(e.g. {by_name[0]}); calibrate on images you do not evaluate on")
    val_hashes = {sha256_file(s.image): s.image.name for s in ds.samples}
    for p in files:
        twin = val_hashes.get(sha256_file(p))
        if twin:
            raise CalibrationFolderError(
                f"calibration image {p.name} has the same contents as image {twin} of {where}; "
                "calibrate on images you do not evaluate on")


MIN_HELD_OUT = 4        # images accuracy is measured on when they are held out of the calibration folder
MIN_FOLDER_FOR_HELD_OUT = 8


def held_out_split(folder: Path, limit: int) -> tuple[list[Path], list[Path], str | None]:
    """(calibration images, images held out for accuracy, a note or None) from one folder: the first
    ``limit`` images calibrate (0: all) and the rest measure accuracy; when fewer than 4 would be
    left, the first N - max(4, N // 4) calibrate and the rest are held out (the note says so). A
    folder of fewer than 8 images is refused: accuracy needs more images or ``--data``."""
    folder = Path(folder)
    every = calibration_files(folder, 0)
    n = len(every)
    if n < MIN_FOLDER_FOR_HELD_OUT:
        raise CalibrationFolderError(
            f"accuracy needs more images or --data: without --data, accuracy is measured on images of the "
            f"calibration folder held out from calibration, and {folder} has only {n} (at least "
            f"{MIN_FOLDER_FOR_HELD_OUT}); give --data (a VOC-style folder with masks, or a folder of images)")
    k = min(limit, n) if limit else n
    note = None
    if n - k < MIN_HELD_OUT:
        k = n - max(MIN_HELD_OUT, n // 4)
        note = (f"calibrated on the first {k} of the {n} images of {folder}; the other {n - k} are held out to "
                f"measure accuracy (--calib-size {limit or 'all'} left fewer than {MIN_HELD_OUT}); give --data or "
                "more images for both")
    return every[:k], every[k:], note


def choose_data(data: Path | None, calib_folder: Path, limit: int, classes: list[str], source: dict | None):
    """What ``quantize`` calibrates and measures accuracy on: (calibration files, ``DataSource``,
    notes). ``--data`` given: the calibration folder's first ``limit`` images and that data (a VOC
    folder, or a folder of images without masks). Without it: the shipped model measures on the
    synthetic split; any other model on calibration images held out from calibration (its labels
    are meaningless for the synthetic split), scored against the FP32 model's masks."""
    if data is not None:
        return calibration_files(calib_folder, limit), open_data(data), []
    if evaluation.is_shipped_model(classes, source):
        return calibration_files(calib_folder, limit), open_data(evaluation.ensure_default_data()), []
    files, held, note = held_out_split(calib_folder, limit)
    where = (f"{calib_folder} (images {len(files) + 1}-{len(files) + len(held)} in name order, held out from "
             "calibration)")
    return files, from_images(held, calib_folder, where), [note] if note else []
