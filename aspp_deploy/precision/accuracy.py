"""Accuracy of a reduced-precision ONNX against its FP32 source, in ONNX Runtime, on the
validation split: mIoU of both, the drop in points, pixel agreement of the two argmax maps, and
the largest absolute logit difference.

Two kinds of labels (``Comparison.labels``): "masks" scores both models against the dataset's masks;
"fp32" (a folder of images without masks) scores the candidate against the FP32 model's own masks,
so the FP32 figures are 1.0 by definition and the candidate's are its agreement with FP32. Either
way the task metric (foreground IoU for binary models, mIoU otherwise) is also taken per image, and
the image where the candidate lost most is named (``worst_image*``).

Each model is fed its own kind of input from the same pixels: the images are resized once to uint8
pixels in the model's channel order, which a fused-I/O model takes as they are and any other model
as their normalised float input (``Preprocess.from_pixels``, bit for bit what ``Preprocess`` gives it);
a model that returns class ids (``--argmax``, fused I/O) is compared by its masks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from aspp_deploy.backends.base import class_ids, runner_input
from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.bench.result_cache import samples_digest
from aspp_deploy.data.images import LABEL_TEXT, DataSource, open_data
from aspp_deploy.eval.evaluate import iter_batches, to_mask_size
from aspp_deploy.eval.metrics import ConfusionMatrix, image_score
from aspp_deploy.io import sha256_file
from aspp_deploy.runtime.images import stack_inputs
from aspp_deploy.runtime.preprocess import Preprocess


@dataclass
class Comparison:
    num_images: int
    miou_fp32: float  # fractions in [0, 1]
    miou: float
    pixel_agreement: float
    max_abs_logit_diff: float | None  # None when the model outputs class ids
    # "masks": scored against the dataset's masks; "fp32": against the FP32 model's own masks (images
    # without labels), where the FP32 figures are 1.0 by definition
    labels: str = "masks"
    foreground_iou_fp32: float | None = None  # binary (2-class) models: IoU of class 1
    foreground_iou: float | None = None
    worst_image: float | None = None  # the task metric on the image where the candidate did worst
    worst_image_fp32: float | None = None  # the FP32 model's task metric on that image
    worst_image_name: str | None = None
    per_class_iou: dict[str, float | None] | None = None  # the candidate's, against the same labels

    @property
    def accuracy_kind(self) -> str:
        """"mIoU vs labels" or "agreement with FP32 (no labels)"."""
        return LABEL_TEXT.get(self.labels, self.labels)

    @property
    def metric(self) -> str:
        """The task metric the budget judges: foreground IoU for binary models, mIoU otherwise."""
        return "foreground IoU" if self.foreground_iou is not None else "mIoU"

    @property
    def miou_drop_points(self) -> float:
        """mIoU lost against FP32, in points (percent); negative when the candidate is better."""
        return 100.0 * (self.miou_fp32 - self.miou)

    @property
    def score_drop_points(self) -> float:
        """The task metric lost against FP32, in points (foreground IoU for binary models, else mIoU)."""
        if self.foreground_iou is not None and self.foreground_iou_fp32 is not None:
            return 100.0 * (self.foreground_iou_fp32 - self.foreground_iou)
        return self.miou_drop_points

    @property
    def worst_drop_points(self) -> float | None:
        """The task metric lost on the worst image, in points (None: not measured)."""
        if self.worst_image is None or self.worst_image_fp32 is None:
            return None
        return 100.0 * (self.worst_image_fp32 - self.worst_image)

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "labels": self.labels, "accuracy_kind": self.accuracy_kind,
                "metric": self.metric, "miou_fp32": self.miou_fp32, "miou": self.miou,
                "delta_miou_points": -self.miou_drop_points, "pixel_agreement": self.pixel_agreement,
                "foreground_iou_fp32": self.foreground_iou_fp32, "foreground_iou": self.foreground_iou,
                "worst_image": self.worst_image, "worst_image_fp32": self.worst_image_fp32,
                "worst_image_name": self.worst_image_name, "per_class_iou": self.per_class_iou,
                "max_abs_logit_diff": self.max_abs_logit_diff,
                "measured_with": "onnxruntime CPUExecutionProvider"}


class _RefTally:
    """The FP32 model's figures: against the masks ("masks"), or 1.0 by definition ("fp32"), and its
    task metric per image (one float an image)."""

    def __init__(self, num_classes: int, labelled: bool) -> None:
        self.cm = ConfusionMatrix(num_classes)
        self.num_classes, self.labelled = num_classes, labelled
        self.scores: list[float] = []

    def add(self, truth: np.ndarray, ref_at_size: np.ndarray) -> float:
        score = 1.0
        if self.labelled:
            self.cm.update(truth, ref_at_size)
            score = image_score(truth, ref_at_size, self.num_classes)
        self.scores.append(score)
        return score

    def miou(self) -> float:
        return self.cm.miou() if self.labelled else 1.0

    def foreground_iou(self) -> float | None:
        if self.num_classes != 2:
            return None
        return self.cm.foreground_iou() if self.labelled else 1.0


def _truths(ref_ids: np.ndarray, masks: list, sizes: list[tuple[int, int]], pre: Preprocess
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(what the candidate is scored against, the FP32 mask at that size) per image: the dataset's
    mask where there is one, else the FP32 model's own mask at the image's size."""
    out = []
    for r, mask, (w, h) in zip(ref_ids, masks, sizes):
        ref_at = to_mask_size(r, (h, w) if mask is None else mask.shape, pre)
        out.append((ref_at if mask is None else mask, ref_at))
    return out


class _Tally:
    """Accumulates one candidate's agreement with the reference, its confusion matrix against the
    labels (masks, or the FP32 masks) and the image where it lost most of the task metric.
    ``class_output``: the candidate returns class ids; ``ref_class_output``: the reference does
    (default: the same)."""

    def __init__(self, num_classes: int, class_output: bool, pre: Preprocess, labels: str = "masks",
                 ref_class_output: bool | None = None) -> None:
        self.cm = ConfusionMatrix(num_classes)
        self.pre = pre
        self.class_output = class_output
        self.ref_class_output = class_output if ref_class_output is None else ref_class_output
        self.labels = labels
        self.agree = self.total = 0
        self.max_diff = 0.0
        self.worst: tuple[float, float, float, str] | None = None  # (drop, score, fp32 score, name)

    def add(self, out: np.ndarray, ref: np.ndarray, masks: list[np.ndarray], names: list[str] | None = None,
            ref_scores: list[float] | None = None) -> None:
        """``masks``: what each image is scored against (the dataset's masks, or the FP32 masks);
        ``ref_scores``: the FP32 model's task metric on each image against them."""
        if not self.class_output and not self.ref_class_output:
            self.max_diff = max(self.max_diff, float(np.max(np.abs(out.astype(np.float32) - ref))))
        pred, ref_pred = class_ids(out, self.class_output), class_ids(ref, self.ref_class_output)
        self.agree += int((pred == ref_pred).sum())
        self.total += pred.size
        n = self.cm.num_classes
        for k, (p, mask) in enumerate(zip(pred, masks)):
            p = to_mask_size(p, mask.shape, self.pre)
            self.cm.update(mask, p)
            score = image_score(mask, p, n)
            ref_score = ref_scores[k] if ref_scores is not None else 1.0
            name = names[k] if names is not None else f"image {k}"
            drop = ref_score - score
            if self.worst is None or (drop, -score) > (self.worst[0], -self.worst[1]):
                self.worst = (drop, score, ref_score, name)

    def result(self, n: int, ref: _RefTally, classes: list[str] | None = None) -> Comparison:
        w = self.worst
        per_class = None
        if classes is not None:
            per_class = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, self.cm.iou())}
        return Comparison(n, ref.miou(), self.cm.miou(), self.agree / max(self.total, 1),
                          None if self.class_output or self.ref_class_output else self.max_diff, self.labels,
                          ref.foreground_iou(), self.cm.foreground_iou(),
                          w[1] if w else None, w[2] if w else None, w[3] if w else None, per_class)


def model_batch(runner: OrtRunner) -> int:
    """The batch a model is measured at: its static batch (an export with ``--batch 4`` takes exactly
    4 images), else 1 (memory stays one image)."""
    return runner.engine.static_batch or 1


def infer_at_model_batch(runner: OrtRunner, x: np.ndarray) -> np.ndarray:
    """``runner.infer(x)``; a last batch smaller than the model's static batch is padded as the runtime
    pads one (``stack_inputs``: copies of its last image), and the padding's outputs are dropped."""
    batch, n = model_batch(runner), len(x)
    if n >= batch:
        return runner.infer(x)
    return runner.infer(stack_inputs(list(x), batch))[:n]


def compare_on_val(fp32_onnx: Path, candidate: Path, data: Path | DataSource, pre: Preprocess,
                   classes: list[str], limit: int | None = None, split: str = "val", threads: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> Comparison:
    """Stream the data through both models (memory stays one batch, whatever the split size). With
    masks, both are scored against them; without, the candidate against FP32's own masks."""

    ds = open_data(data, split)
    n = min(limit, len(ds)) if limit else len(ds)
    with OrtRunner(fp32_onnx, threads=threads) as ref_runner, OrtRunner(candidate, threads=threads) as runner:
        class_output = ref_runner.info.outputs_class_ids
        ref_tally = _RefTally(len(classes), ds.labelled)
        tally = _Tally(len(classes), runner.info.outputs_class_ids, pre, ds.labels, class_output)
        done = 0
        for px, masks, names, sizes in iter_batches(ds, pre.fused(), len(classes), model_batch(ref_runner), n):
            ref = infer_at_model_batch(ref_runner, runner_input(ref_runner, px, pre))
            pairs = _truths(class_ids(ref, class_output), masks, sizes, pre)
            scores = [ref_tally.add(truth, ref_at) for truth, ref_at in pairs]
            tally.add(infer_at_model_batch(runner, runner_input(runner, px, pre)), ref, [t for t, _ in pairs], names,
                      scores)
            done += len(names)
            if progress:
                progress(done, n)
    return tally.result(n, ref_tally, classes)


class Reference:
    """The FP32 model's outputs on the first ``limit`` validation images, so that many candidates
    (the budget loop) are compared without re-running FP32. Inputs (as uint8 pixels: ``model_input``
    makes each candidate's own kind of input from them), outputs and what each image is scored against (its mask, or the FP32 model's mask for an image without one) are kept in
    ``.npy`` files (in ``folder``, else a temporary folder removed with this object) and read back
    one batch at a time: memory stays one batch (the model's static batch, else one image) whatever
    ``limit`` is."""

    def __init__(self, fp32_onnx: Path, data: Path | DataSource, pre: Preprocess, classes: list[str],
                 limit: int, split: str = "val", threads: int = 0, folder: Path | None = None) -> None:
        import weakref

        self.classes, self.threads, self.pre = classes, threads, pre
        if folder is None:
            from aspp_deploy.io import TempFolder

            self._tmp = TempFolder("aspp-reference-")  # with our pid: a killed run's is removed by the next
            weakref.finalize(self, self._tmp.cleanup)
            folder = Path(self._tmp.name)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        ds = open_data(data, split)
        self.labels = ds.labels
        self.limit = min(limit, len(ds))
        self.ref = _RefTally(len(classes), ds.labelled)
        self.names: list[str] = []
        self.batches = 0  # stored .npy batches (images / the model's batch, rounded up)
        with OrtRunner(fp32_onnx, threads=threads) as runner:
            self.class_output = runner.info.outputs_class_ids
            for i, (x, masks, names, sizes) in enumerate(iter_batches(ds, pre.fused(), len(classes),
                                                                      model_batch(runner), self.limit)):
                out = infer_at_model_batch(runner, runner_input(runner, x, pre))
                pairs = _truths(class_ids(out, self.class_output), masks, sizes, pre)
                np.save(self.folder / f"x{i:05d}.npy", x)
                np.save(self.folder / f"ref{i:05d}.npy", out)
                np.savez(self.folder / f"masks{i:05d}.npz", *[t for t, _ in pairs])
                for truth, ref_at in pairs:
                    self.ref.add(truth, ref_at)
                self.names += names
                self.batches = i + 1

    @property
    def cm(self) -> ConfusionMatrix:
        return self.ref.cm

    def _items(self):
        for i in range(self.batches):
            with np.load(self.folder / f"masks{i:05d}.npz") as z:
                masks = [z[f"arr_{k}"] for k in range(len(z.files))]
            yield np.load(self.folder / f"x{i:05d}.npy"), masks, np.load(self.folder / f"ref{i:05d}.npy")

    def compare(self, candidate: Path) -> Comparison:
        with OrtRunner(candidate, threads=self.threads) as runner:
            tally = _Tally(len(self.classes), runner.info.outputs_class_ids, self.pre, self.labels, self.class_output)
            k = 0
            for x, masks, ref in self._items():
                n = len(masks)
                out = infer_at_model_batch(runner, runner_input(runner, x, self.pre))
                tally.add(out, ref, masks, self.names[k:k + n], self.ref.scores[k:k + n])
                k += n
        return tally.result(self.limit, self.ref, self.classes)


def comparison_key(fp32_sha256: str, candidate: Path, data: Path | DataSource, pre: Preprocess,
                   classes: list[str], limit: int | None, split: str = "val", threads: int = 0) -> tuple[dict, int]:
    """What a ``Comparison`` of ``candidate`` with its FP32 source depends on: both files by content
    (sha256), the first ``limit`` images and masks by content, the kind of labels, the preprocessing,
    the classes and the ONNX Runtime settings; and how many images that is."""
    from aspp_deploy.export.manifest import tool_versions

    ds = open_data(data, split)
    samples = ds.samples[:limit] if limit else ds.samples
    key = {"what": "quantize-accuracy", "fp32_sha256": fp32_sha256, "candidate_sha256": sha256_file(candidate),
           "data": samples_digest(samples, len(classes)), "images": len(samples), "labels": ds.labels,
           "preprocess": pre.to_dict(), "classes": list(classes), "threads": threads,
           "figures": "v2: per-image task metric, foreground IoU",
           "measured_with": "onnxruntime CPUExecutionProvider " + str(tool_versions().get("onnxruntime"))}
    return key, len(samples)


_CACHED_FIELDS = ("num_images", "miou_fp32", "miou", "pixel_agreement", "max_abs_logit_diff", "labels",
                  "foreground_iou_fp32", "foreground_iou", "worst_image", "worst_image_fp32", "worst_image_name",
                  "per_class_iou")


def _from_cache(cache, key: dict) -> Comparison | None:
    if cache is None:
        return None
    hit = cache.get(key)
    if hit is None:
        return None
    r = hit.result

    def opt(name: str) -> float | None:
        return None if r[name] is None else float(r[name])

    try:
        per_class = r["per_class_iou"]
        if per_class is not None and not isinstance(per_class, dict):
            return None
        cmp = Comparison(int(r["num_images"]), float(r["miou_fp32"]), float(r["miou"]),
                         float(r["pixel_agreement"]), opt("max_abs_logit_diff"), str(r["labels"]),
                         opt("foreground_iou_fp32"), opt("foreground_iou"), opt("worst_image"),
                         opt("worst_image_fp32"), None if r["worst_image_name"] is None else str(r["worst_image_name"]),
                         per_class)
    except (KeyError, TypeError, ValueError):
        return None
    return cmp if cmp.num_images == key.get("images") and cmp.labels == key.get("labels") else None


def _to_cache(cache, key: dict, cmp: Comparison) -> None:
    if cache is not None:
        cache.put(key, {f: getattr(cmp, f) for f in _CACHED_FIELDS})


def cached_compare_on_val(cache, fp32_onnx: Path, fp32_sha256: str, candidate: Path, data: Path | DataSource,
                          pre: Preprocess, classes: list[str], limit: int | None = None,
                          threads: int = 0) -> Comparison:
    """``compare_on_val``, reused from ``cache`` (a ``ResultCache``, or None) when the same candidate was
    measured on the same images with the same settings before (by the budget loop, or an earlier run)."""
    key, _ = comparison_key(fp32_sha256, candidate, data, pre, classes, limit, threads=threads)
    cmp = _from_cache(cache, key)
    if cmp is None:
        cmp = compare_on_val(fp32_onnx, candidate, data, pre, classes, limit, threads=threads)
        _to_cache(cache, key, cmp)
    return cmp


_SHARED: dict[str, Reference] = {}  # the last FP32 reference made, for the next quantize in this process


class LazyReference:
    """A ``Reference`` for the budget loop that runs the FP32 model only when a comparison is not in
    ``cache``, and is shared by the quantizations of one process (``compare`` makes three variants
    from one FP32 ONNX on the same images)."""

    def __init__(self, fp32_onnx: Path, fp32_sha256: str, data: Path | DataSource, pre: Preprocess,
                 classes: list[str], limit: int, threads: int = 0, cache=None) -> None:
        self.fp32_onnx, self.fp32_sha256, self.pre = Path(fp32_onnx), fp32_sha256, pre
        self.data = open_data(data, "val")
        self.classes, self.threads, self.cache = list(classes), threads, cache
        self.limit = min(limit, len(self.data))
        self.labels = self.data.labels
        self._ref: Reference | None = None

    def _reference(self) -> Reference:
        if self._ref is None:
            import json

            from aspp_deploy.bench.result_cache import samples_digest

            images = samples_digest(self.data.samples[:self.limit], len(self.classes))
            memo = json.dumps([self.fp32_sha256, images, self.data.labels, self.pre.to_dict(), self.classes,
                               self.limit, self.threads], sort_keys=True)
            ref = _SHARED.get(memo)
            if ref is None or not ref.folder.is_dir():
                _SHARED.clear()
                ref = _SHARED[memo] = Reference(self.fp32_onnx, self.data, self.pre, self.classes, self.limit,
                                                threads=self.threads)
            self._ref = ref
        return self._ref

    def compare(self, candidate: Path) -> Comparison:
        key, _ = comparison_key(self.fp32_sha256, candidate, self.data, self.pre, self.classes, self.limit,
                                threads=self.threads)
        cmp = _from_cache(self.cache, key)
        if cmp is None:
            cmp = self._reference().compare(candidate)
            _to_cache(self.cache, key, cmp)
        return cmp
