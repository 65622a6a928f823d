"""Accuracy of any runner on a VOC-style split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from aspp_deploy.backends.base import Runner, class_ids, runner_input
from aspp_deploy.data.images import LABEL_TEXT, open_data
from aspp_deploy.data.synthetic import CLASSES, write_synthetic_voc
from aspp_deploy.data.voc import VOCSegmentation, load_image, load_mask
from aspp_deploy.errors import DatasetError, InputError
from aspp_deploy.eval.metrics import ConfusionMatrix, image_score, no_labelled_pixels
from aspp_deploy.io import read_json_object, sha256_file
from aspp_deploy.runtime.preprocess import Preprocess

if TYPE_CHECKING:
    from aspp_deploy.data.images import DataSource

DEFAULT_VAL_IMAGES = 200
DEFAULT_SEED = 0


def default_data_dir() -> Path:
    """Where the synthetic validation split lives when ``--data`` is not given."""
    base = os.environ.get("ASPP_DEPLOY_CACHE") or Path.home() / ".cache" / "aspp-deploy"
    return Path(base) / f"synth-seed{DEFAULT_SEED}"


def ensure_default_data(progress: Callable[[str, int, int], None] | None = None) -> Path:
    """The default validation data, regenerated deterministically if absent."""

    root = default_data_dir()
    if not (root / "ImageSets" / "Segmentation" / "val.txt").is_file():
        write_synthetic_voc(root, {"val": DEFAULT_VAL_IMAGES}, seed=DEFAULT_SEED, progress=progress)
    return root


def check_dataset_classes(data: Path, classes: list[str]) -> None:
    """DatasetError (one line) when ``data/dataset.json`` lists classes and the model predicts
    another number of them: its IoUs would be computed against the wrong labels. A folder without
    dataset.json is not checked here (masks with ids past the model's classes are refused later);
    a dataset.json that is not an object, or whose ``classes`` is not a list of names, is refused."""

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
    per_class_iou: dict[str, float | None]
    confusion: list[list[int]] = field(repr=False, default_factory=list)
    # "masks": against the dataset's masks; "fp32": against a reference FP32 model's masks (no labels)
    labels: str = "masks"
    foreground_iou: float | None = None  # binary (2-class) models: IoU of class 1
    worst_image: float | None = None     # the task metric on the image that scored lowest
    worst_image_name: str | None = None

    @property
    def metric(self) -> str:
        return "foreground IoU" if self.foreground_iou is not None else "mIoU"

    @property
    def accuracy_kind(self) -> str:
        return LABEL_TEXT[self.labels]

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "labels": self.labels, "accuracy_kind": self.accuracy_kind,
                "metric": self.metric, "miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "foreground_iou": self.foreground_iou, "worst_image": self.worst_image,
                "worst_image_name": self.worst_image_name,
                "per_class_iou": self.per_class_iou, "confusion": self.confusion}


def iter_batches(ds: "DataSource | VOCSegmentation", pre: Preprocess, num_classes: int, batch: int = 1,
                 limit: int | None = None
                 ) -> Iterator[tuple[np.ndarray, list[np.ndarray | None], list[str], list[tuple[int, int]]]]:
    """(input batch, original-size masks (None for an image without one), names, (width, height)
    of each image), in order."""
    samples = ds.samples[:limit] if limit else ds.samples
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        images = [load_image(s.image) for s in chunk]
        x = np.stack([pre(im) for im in images])
        masks = [None if s.mask is None else load_mask(s.mask, num_classes, im.size) for s, im in zip(chunk, images)]
        yield x, masks, [s.name for s in chunk], [im.size for im in images]


def to_mask_size(pred: np.ndarray, shape: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """A class-id map predicted on the model input -> the mask's (H, W): ``pre.restore`` undoes the
    preprocessing's geometry (stretch, letterbox, centre crop) with nearest-neighbour resizing."""
    return pre.restore(pred, (shape[1], shape[0]))


def evaluate(runner: Runner, data: "Path | DataSource", pre: Preprocess, classes: list[str], split: str = "val",
             batch: int = 1, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None, reference: Runner | None = None) -> EvalResult:
    """Accuracy of ``runner`` on ``data``: against its masks, or, for a folder of images without
    masks, against ``reference``'s masks (an FP32 model; required then)."""

    ds = open_data(data, split)
    if not ds.labelled and reference is None:
        raise DatasetError(f"{ds} has images but no masks: accuracy needs labels (a VOC-style folder with masks) "
                           "or an FP32 reference model to agree with (--reference FP32.onnx)")
    total = min(len(ds), limit) if limit else len(ds)
    cm = ConfusionMatrix(len(classes))
    done = 0
    worst: tuple[float, str] | None = None
    for px, masks, names, sizes in iter_batches(ds, pre.fused(), len(classes), batch, limit):
        preds = class_ids(runner.infer(runner_input(runner, px, pre)), runner.info.outputs_class_ids)
        refs = None if ds.labelled or reference is None else class_ids(reference.infer(runner_input(reference, px, pre)),
                                                                       reference.info.outputs_class_ids)
        for k, (pred, mask, name, (w, h)) in enumerate(zip(preds, masks, names, sizes)):
            truth = mask if mask is not None else to_mask_size(refs[k], (h, w), pre)  # type: ignore[index]
            p = to_mask_size(pred, truth.shape, pre)
            cm.update(truth, p)
            score = image_score(truth, p, len(classes))
            if worst is None or score < worst[0]:
                worst = (score, name)
        done += len(masks)
        if progress:
            progress(done, total)
    if not cm.measured:  # every mask pixel is 255 (ignore): say so rather than report mIoU nan with exit 0
        raise no_labelled_pixels(f"the {total} mask(s) of {ds}")
    iou = cm.iou()
    return EvalResult(total, cm.miou(), cm.pixel_accuracy(),
                      {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)},
                      cm.matrix.tolist(), ds.labels, cm.foreground_iou(),
                      worst[0] if worst else None, worst[1] if worst else None)


def shipped_checkpoint_sha256() -> str | None:
    """The shipped checkpoint's sha256 (from its models/*.json record, else hashed); None without it."""
    from aspp_deploy.model.checkpoint import DEFAULT_CHECKPOINT

    record = DEFAULT_CHECKPOINT.with_suffix(".json")
    if record.is_file():
        try:
            sha = read_json_object(record, "").get("sha256")
            if isinstance(sha, str) and sha:
                return sha
        except Exception:  # an unreadable record: hash the file instead
            pass
    return sha256_file(DEFAULT_CHECKPOINT) if DEFAULT_CHECKPOINT.is_file() else None


def is_shipped_model(classes: list[str], source: dict | None) -> bool:
    """True for the shipped model (or an artifact made from it): the synthetic dataset's classes and
    the shipped checkpoint's sha256 as its source. Only that model is measured on the synthetic split
    by default: its labels mean nothing to any other model."""

    sha = (source or {}).get("checkpoint_sha256")
    return list(classes) == list(CLASSES) and bool(sha) and sha == shipped_checkpoint_sha256()


def default_data_for(classes: list[str], source: dict | None, what: str,
                     progress: Callable[[str, int, int], None] | None = None) -> Path:
    """``--data``'s default: the synthetic split for the shipped model; for any other model one
    InputError line naming --data (``what``: the command, for the message)."""

    if not is_shipped_model(classes, source):
        raise InputError(f"{what} needs --data for this model: a VOC-style folder with masks, or a folder of "
                         "images (accuracy is then agreement with the FP32 model); the built-in synthetic split "
                         "is labelled for the shipped model only")
    return ensure_default_data(progress)
