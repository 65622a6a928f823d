"""Accuracy of any runner on a VOC-style split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from aspp_deploy.backends.base import Runner, class_ids
from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.data.voc import VOCSegmentation, load_image, load_mask
from aspp_deploy.eval.metrics import ConfusionMatrix

DEFAULT_VAL_IMAGES = 200
DEFAULT_SEED = 0


def default_data_dir() -> Path:
    """Where the synthetic validation split lives when ``--data`` is not given."""
    base = os.environ.get("ASPP_DEPLOY_CACHE") or Path.home() / ".cache" / "aspp-deploy"
    return Path(base) / f"synth-seed{DEFAULT_SEED}"


def ensure_default_data(progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The default validation data, regenerated deterministically if absent."""
    from aspp_deploy.data.synthetic import write_synthetic_voc

    root = default_data_dir()
    if not (root / "ImageSets" / "Segmentation" / "val.txt").is_file():
        write_synthetic_voc(root, {"val": DEFAULT_VAL_IMAGES}, seed=DEFAULT_SEED, progress=progress)
    return root


def check_dataset_classes(data: Path, classes: list[str]) -> None:
    """DatasetError (one line) when ``data/dataset.json`` lists classes and the model predicts
    another number of them: its IoUs would be computed against the wrong labels. A folder without
    dataset.json is not checked here (masks with ids past the model's classes are refused later);
    a dataset.json that is not an object, or whose ``classes`` is not a list of names, is refused."""
    from aspp_deploy.errors import DatasetError
    from aspp_deploy.io import read_json_object

    meta = Path(data) / "dataset.json"
    if not meta.is_file():
        return
    listed = read_json_object(meta, "").get("classes")
    if listed is None:
        return
    if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
        raise DatasetError(f"{meta}: 'classes' must be a list of class names (background first)")
    if len(listed) != len(classes):
        shown = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
        raise DatasetError(f"the model predicts {len(classes)} classes but {meta} lists {len(listed)} ({shown}): "
                           "evaluate it on data labelled with the model's classes")


@dataclass
class EvalResult:
    num_images: int
    miou: float
    pixel_accuracy: float
    per_class_iou: dict[str, float]
    confusion: list[list[int]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "per_class_iou": self.per_class_iou, "confusion": self.confusion}


def iter_batches(ds: VOCSegmentation, pre: Preprocess, num_classes: int, batch: int = 1,
                 limit: int | None = None) -> Iterator[tuple[np.ndarray, list[np.ndarray], list[str]]]:
    """(input batch, original-size masks, names), in split order."""
    samples = ds.samples[:limit] if limit else ds.samples
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        images = [load_image(s.image) for s in chunk]
        x = np.stack([pre(im) for im in images])
        yield x, [load_mask(s.mask, num_classes, im.size) for s, im in zip(chunk, images)], [s.name for s in chunk]


def to_mask_size(pred: np.ndarray, shape: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """A class-id map predicted on the model input -> the mask's (H, W): ``pre.restore`` undoes the
    preprocessing's geometry (stretch, letterbox, centre crop) with nearest-neighbour resizing."""
    return pre.restore(pred, (shape[1], shape[0]))


def evaluate(runner: Runner, data: Path, pre: Preprocess, classes: list[str], split: str = "val",
             batch: int = 1, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    ds = VOCSegmentation(data, split)
    total = min(len(ds), limit) if limit else len(ds)
    cm = ConfusionMatrix(len(classes))
    done = 0
    for x, masks, _ in iter_batches(ds, pre, len(classes), batch, limit):
        preds = class_ids(runner.infer(x), runner.info.outputs_class_ids)
        for pred, mask in zip(preds, masks):
            cm.update(mask, to_mask_size(pred, mask.shape, pre))
        done += len(masks)
        if progress:
            progress(done, total)
    iou = cm.iou()
    return EvalResult(total, cm.miou(), cm.pixel_accuracy(),
                      {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)},
                      cm.matrix.tolist())
