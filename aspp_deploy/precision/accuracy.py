"""Accuracy of a reduced-precision ONNX against its FP32 source, in ONNX Runtime, on the
validation split: mIoU of both, the drop in points, pixel agreement of the two argmax maps, and
the largest absolute logit difference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from aspp_deploy.backends.base import class_ids
from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.data.voc import VOCSegmentation
from aspp_deploy.eval.evaluate import iter_batches, to_mask_size
from aspp_deploy.eval.metrics import ConfusionMatrix


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
        return {"num_images": self.num_images, "miou_fp32": self.miou_fp32, "miou": self.miou,
                "delta_miou_points": -self.miou_drop_points, "pixel_agreement": self.pixel_agreement,
                "max_abs_logit_diff": self.max_abs_logit_diff,
                "measured_with": "onnxruntime CPUExecutionProvider"}


class _Tally:
    """Accumulates one candidate's agreement with the reference and its confusion matrix."""

    def __init__(self, num_classes: int, class_output: bool, pre: Preprocess) -> None:
        self.cm = ConfusionMatrix(num_classes)
        self.pre = pre
        self.class_output = class_output
        self.agree = self.total = 0
        self.max_diff = 0.0

    def add(self, out: np.ndarray, ref: np.ndarray, masks: list[np.ndarray]) -> None:
        if not self.class_output:
            self.max_diff = max(self.max_diff, float(np.max(np.abs(out.astype(np.float32) - ref))))
        pred, ref_pred = class_ids(out, self.class_output), class_ids(ref, self.class_output)
        self.agree += int((pred == ref_pred).sum())
        self.total += pred.size
        for p, mask in zip(pred, masks):
            self.cm.update(mask, to_mask_size(p, mask.shape, self.pre))

    def result(self, n: int, ref_cm: ConfusionMatrix) -> Comparison:
        return Comparison(n, ref_cm.miou(), self.cm.miou(), self.agree / max(self.total, 1),
                          None if self.class_output else self.max_diff)


def compare_on_val(fp32_onnx: Path, candidate: Path, data: Path, pre: Preprocess, classes: list[str],
                   limit: int | None = None, split: str = "val", threads: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> Comparison:
    """Stream the split through both models (memory stays one batch, whatever the split size)."""
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner

    ds = VOCSegmentation(data, split)
    n = min(limit, len(ds)) if limit else len(ds)
    with OrtRunner(fp32_onnx, threads=threads) as ref_runner, OrtRunner(candidate, threads=threads) as runner:
        class_output = ref_runner.info.outputs_class_ids
        ref_cm = ConfusionMatrix(len(classes))
        tally = _Tally(len(classes), class_output, pre)
        for i, (x, masks, _) in enumerate(iter_batches(ds, pre, len(classes), 1, n)):
            ref = ref_runner.infer(x)
            for r, mask in zip(class_ids(ref, class_output), masks):
                ref_cm.update(mask, to_mask_size(r, mask.shape, pre))
            tally.add(runner.infer(x), ref, masks)
            if progress:
                progress(i + 1, n)
    return tally.result(n, ref_cm)


class Reference:
    """The FP32 model's outputs on the first ``limit`` validation images, so that many candidates
    (the budget loop) are compared without re-running FP32. Inputs, outputs and masks are kept in
    ``.npy`` files (in ``folder``, else a temporary folder removed with this object) and read back
    one image at a time: memory stays one image whatever ``limit`` is."""

    def __init__(self, fp32_onnx: Path, data: Path, pre: Preprocess, classes: list[str],
                 limit: int, split: str = "val", threads: int = 0, folder: Path | None = None) -> None:
        import tempfile
        import weakref

        from aspp_deploy.backends.onnxruntime_backend import OrtRunner

        self.classes, self.threads, self.pre = classes, threads, pre
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="aspp-reference-")
            weakref.finalize(self, self._tmp.cleanup)
            folder = Path(self._tmp.name)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        ds = VOCSegmentation(data, split)
        self.limit = min(limit, len(ds))
        self.cm = ConfusionMatrix(len(classes))
        with OrtRunner(fp32_onnx, threads=threads) as runner:
            self.class_output = runner.info.outputs_class_ids
            for i, (x, masks, _) in enumerate(iter_batches(ds, pre, len(classes), 1, self.limit)):
                out = runner.infer(x)
                np.save(self.folder / f"x{i:05d}.npy", x)
                np.save(self.folder / f"ref{i:05d}.npy", out)
                np.savez(self.folder / f"masks{i:05d}.npz", *masks)
                for pred, mask in zip(class_ids(out, self.class_output), masks):
                    self.cm.update(mask, to_mask_size(pred, mask.shape, pre))

    def _items(self):
        for i in range(self.limit):
            with np.load(self.folder / f"masks{i:05d}.npz") as z:
                masks = [z[f"arr_{k}"] for k in range(len(z.files))]
            yield np.load(self.folder / f"x{i:05d}.npy"), masks, np.load(self.folder / f"ref{i:05d}.npy")

    def compare(self, candidate: Path) -> Comparison:
        from aspp_deploy.backends.onnxruntime_backend import OrtRunner

        tally = _Tally(len(self.classes), self.class_output, self.pre)
        with OrtRunner(candidate, threads=self.threads) as runner:
            for x, masks, ref in self._items():
                tally.add(runner.infer(x), ref, masks)
        return tally.result(self.limit, self.cm)


def comparison_key(fp32_sha256: str, candidate: Path, data: Path, pre: Preprocess, classes: list[str],
                   limit: int | None, split: str = "val", threads: int = 0) -> tuple[dict, int]:
    """What a ``Comparison`` of ``candidate`` with its FP32 source depends on: both files by content
    (sha256), the first ``limit`` images and masks by content, the preprocessing, the classes and the
    ONNX Runtime settings; and how many images that is."""
    from aspp_deploy.bench.result_cache import samples_digest
    from aspp_deploy.export.manifest import tool_versions
    from aspp_deploy.io import sha256_file

    samples = VOCSegmentation(data, split).samples
    samples = samples[:limit] if limit else samples
    key = {"what": "quantize-accuracy", "fp32_sha256": fp32_sha256, "candidate_sha256": sha256_file(candidate),
           "data": samples_digest(samples, len(classes)), "images": len(samples), "preprocess": pre.to_dict(),
           "classes": list(classes), "threads": threads,
           "measured_with": "onnxruntime CPUExecutionProvider " + str(tool_versions().get("onnxruntime"))}
    return key, len(samples)


def _from_cache(cache, key: dict) -> Comparison | None:
    if cache is None:
        return None
    hit = cache.get(key)
    if hit is None:
        return None
    r = hit.result
    try:
        cmp = Comparison(int(r["num_images"]), float(r["miou_fp32"]), float(r["miou"]),
                         float(r["pixel_agreement"]),
                         None if r["max_abs_logit_diff"] is None else float(r["max_abs_logit_diff"]))
    except (KeyError, TypeError, ValueError):
        return None
    return cmp if cmp.num_images == key.get("images") else None


def _to_cache(cache, key: dict, cmp: Comparison) -> None:
    if cache is not None:
        cache.put(key, {"num_images": cmp.num_images, "miou_fp32": cmp.miou_fp32, "miou": cmp.miou,
                        "pixel_agreement": cmp.pixel_agreement, "max_abs_logit_diff": cmp.max_abs_logit_diff})


def cached_compare_on_val(cache, fp32_onnx: Path, fp32_sha256: str, candidate: Path, data: Path, pre: Preprocess,
                          classes: list[str], limit: int | None = None, threads: int = 0) -> Comparison:
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

    def __init__(self, fp32_onnx: Path, fp32_sha256: str, data: Path, pre: Preprocess, classes: list[str],
                 limit: int, threads: int = 0, cache=None) -> None:
        self.fp32_onnx, self.fp32_sha256, self.data, self.pre = Path(fp32_onnx), fp32_sha256, Path(data), pre
        self.classes, self.threads, self.cache = list(classes), threads, cache
        self.limit = min(limit, len(VOCSegmentation(data, "val")))
        self._ref: Reference | None = None

    def _reference(self) -> Reference:
        if self._ref is None:
            import json

            from aspp_deploy.bench.result_cache import samples_digest

            images = samples_digest(VOCSegmentation(self.data, "val").samples[:self.limit], len(self.classes))
            memo = json.dumps([self.fp32_sha256, images, self.pre.to_dict(), self.classes, self.limit,
                               self.threads], sort_keys=True)
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
