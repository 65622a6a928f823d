"""``compare``: every backend x precision on the same validation images and latency bench,
measured against PyTorch FP32. A row that cannot run here stays in the table with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aspp_deploy.backends.base import class_ids
from aspp_deploy.bench.timing import BenchResult, bench_runner
from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.data.voc import VOCSegmentation, load_image, load_mask
from aspp_deploy.errors import AsppDeployError
from aspp_deploy.eval.boundary import BoundaryF
from aspp_deploy.eval.evaluate import to_mask_size
from aspp_deploy.eval.metrics import ConfusionMatrix

LOGIT_DIFF_IMAGES = 8  # images on which logits are kept to measure max |logit diff|
KEPT_PREDICTIONS = 8   # masks a non-reference row keeps (the report's overlays use the first few)


@dataclass
class RowSpec:
    backend: str
    precision: str
    device: str = "cpu"
    artifact: Path | None = None
    produce: Callable[[], Path] | None = None  # makes the artifact when it is missing
    unavailable: str | None = None              # why it cannot run here
    note: str = ""
    refresh: bool = False                       # the artifact is out of date: make it again

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.device})"


@dataclass
class Row:
    spec: RowSpec
    status: str = "ok"       # ok | unavailable | failed
    reason: str = ""
    size_bytes: int | None = None
    miou: float | None = None
    delta_miou: float | None = None
    pixel_agreement: float | None = None
    boundary_f: float | None = None
    max_abs_logit_diff: float | None = None
    per_class_iou: dict[str, float | None] = field(default_factory=dict)
    bench: BenchResult | None = None
    speedup: float | None = None
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        s = self.spec
        lat = self.bench.end_to_end if self.bench else None
        return {"backend": s.backend, "precision": s.precision, "device": s.device,
                "artifact": str(s.artifact) if s.artifact else None, "note": s.note,
                "status": self.status, "reason": self.reason, "size_bytes": self.size_bytes,
                "miou": self.miou, "delta_miou": self.delta_miou, "pixel_agreement": self.pixel_agreement,
                "boundary_f": self.boundary_f, "max_abs_logit_diff": self.max_abs_logit_diff,
                "p50_ms": lat.p50 if lat else None, "p99_ms": lat.p99 if lat else None,
                "throughput": lat.throughput if lat else None, "speedup": self.speedup,
                "latency_unstable": lat.unstable if lat else None,
                "per_class_iou": self.per_class_iou, "latency": self.bench.to_dict() if self.bench else None}


class _Streamed(Sequence):
    """Items made on access from the samples (an image's input tensor, a mask): memory stays one item,
    whatever the split's size. Masks are checked once, up front, so a bad mask fails before any row."""

    def __init__(self, samples: list, make: Callable) -> None:
        self.samples, self.make = samples, make

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.make(s) for s in self.samples[i]]
        return self.make(self.samples[i])


class ValidationSet:
    """The validation images, shared by every row and streamed: each row decodes and preprocesses them
    as it goes (about 3 MB a 512x512 input: a whole split is not held)."""

    def __init__(self, data: Path, pre: Preprocess, num_classes: int, limit: int | None) -> None:
        ds = VOCSegmentation(data, "val")
        self.samples = ds.samples[:limit] if limit else ds.samples
        self.inputs = _Streamed(self.samples, lambda s: pre(load_image(s.image))[None])
        self.masks = _Streamed(self.samples, lambda s: load_mask(s.mask, num_classes))
        for s in self.samples:  # fail now on a missing or mislabelled mask, not after the first rows
            load_mask(s.mask, num_classes)
        self.pre = pre
        self.num_classes = num_classes


def measure_row(row: Row, runner, val: ValidationSet, classes: list[str], reference: Row | None,
                ref_logits: list[np.ndarray] | None, warmup: int, iters: int,
                progress: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Fill ``row`` with accuracy and latency; return the logits of the first images."""
    cm = ConfusionMatrix(len(classes))
    bf = BoundaryF()
    agree = total = 0
    max_diff = 0.0
    kept: list[np.ndarray] = []
    for i, (x, mask) in enumerate(zip(val.inputs, val.masks)):
        out = runner.infer(x)
        pred = to_mask_size(class_ids(out, runner.info.outputs_class_ids)[0], mask.shape, val.pre).astype(np.uint8)
        cm.update(mask, pred)
        if reference is None or i < KEPT_PREDICTIONS:  # the reference keeps all: every row is compared with it
            row.predictions.append(pred)
        if reference is not None:
            ref = reference.predictions[i]
            agree += int((ref == pred).sum())
            total += ref.size
            bf.update(ref, pred)
        if i < LOGIT_DIFF_IMAGES and not runner.info.outputs_class_ids:
            logits = np.asarray(out, dtype=np.float32)
            kept.append(logits)
            if ref_logits is not None and i < len(ref_logits):
                max_diff = max(max_diff, float(np.abs(logits - ref_logits[i]).max()))
        if progress:
            progress(i + 1, len(val.inputs))
    iou = cm.iou()
    row.miou = cm.miou()
    row.per_class_iou = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)}
    if reference is not None:
        row.pixel_agreement = agree / total if total else None
        row.boundary_f = bf.score()
        row.delta_miou = row.miou - (reference.miou or 0.0)
        row.max_abs_logit_diff = max_diff if kept and ref_logits else None
    row.bench = bench_runner(runner, val.inputs[0], warmup, iters)
    return kept


def run_compare(specs: list[RowSpec], val: ValidationSet, classes: list[str], open_runner,
                warmup: int = 5, iters: int = 30, log: Callable[[str], None] = lambda m: None,
                progress_factory=None) -> list[Row]:
    """Run every spec; the first runnable one is the reference (PyTorch FP32)."""
    rows = [Row(s) for s in specs]
    reference: Row | None = None
    ref_logits: list[np.ndarray] | None = None
    for row in rows:
        s = row.spec
        if s.unavailable:
            row.status, row.reason = "unavailable", s.unavailable
            continue
        try:
            if s.artifact is not None and (s.refresh or not s.artifact.is_file()):
                if s.produce is None:
                    raise AsppDeployError(f"{s.artifact} is missing")
                log(f"{'remaking out-of-date' if s.refresh else 'making'} {s.artifact.name} ...")
                s.artifact = s.produce()
            with open_runner(s) as runner:
                progress = progress_factory(s.label) if progress_factory else None
                kept = measure_row(row, runner, val, classes, reference, ref_logits, warmup, iters, progress)
        except AsppDeployError as exc:
            row.status, row.reason = "unavailable", str(exc)
            continue
        except Exception as exc:  # one broken backend must not hide the others
            row.status, row.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        if s.artifact is not None and s.artifact.is_file():
            row.size_bytes = s.artifact.stat().st_size
        if reference is None:
            reference, ref_logits = row, kept
            row.delta_miou, row.pixel_agreement, row.boundary_f, row.max_abs_logit_diff = 0.0, 1.0, 1.0, 0.0
        log(f"{s.label}: mIoU {row.miou:.4f}, p50 {row.bench.end_to_end.p50:.1f} ms" if row.bench else s.label)
    if reference is not None and reference.bench is not None:
        base = reference.bench.end_to_end.p50
        for row in rows:
            if row.bench is not None:
                row.speedup = base / row.bench.end_to_end.p50
    return rows
