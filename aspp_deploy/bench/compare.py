"""``compare``: every backend x precision on the same validation images and latency bench,
measured against PyTorch FP32. A row that cannot run here stays in the table with its reason.

Nothing is measured twice: with a ``ResultCache`` (``ARTIFACTS/result-cache/``) a row's accuracy
figures and first predictions are stored under a key of what they depend on (``row_key``: the
artifact's sha256 or the PyTorch source's fingerprint, the data's digest, the preprocessing, the
backend/precision settings; for the figures against the reference, the reference's key too) and
reused only where the key matches exactly. Its latency is measured every time unless asked to be
reused too (then keyed further by the bench settings and the machine); where the accuracy pass
runs, its own synchronised calls (after ``warmup`` of them) are the latency samples, so the model
is not run ``warmup + iters`` times more for the bench. A row whose figures all
come from the cache does not even open its runner; a row that misses while the reference's came
from the cache runs the reference once more to compare with it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aspp_deploy.backends.base import class_ids
from aspp_deploy.bench.result_cache import Cached, ResultCache, samples_digest
from aspp_deploy.bench.stats import latency_stats
from aspp_deploy.bench.timing import BenchResult, bench_runner
from aspp_deploy.data.images import DataSource, open_data
from aspp_deploy.data.voc import image_size, load_image, load_mask
from aspp_deploy.errors import AsppDeployError
from aspp_deploy.eval.boundary import BoundaryF
from aspp_deploy.eval.evaluate import to_mask_size
from aspp_deploy.eval.metrics import ConfusionMatrix, image_score
from aspp_deploy.io import TempFolder
from aspp_deploy.runtime.preprocess import Preprocess

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
    labels: str = "masks"            # "masks": vs the dataset's masks; "fp32": vs the reference row's masks
    foreground_iou: float | None = None  # binary (2-class) models: IoU of class 1
    image_scores: list[float] = field(default_factory=list, repr=False)  # the task metric per image
    worst_image: float | None = None     # the task metric on the image that lost most against the reference
    worst_image_name: str | None = None
    bench: BenchResult | None = None
    speedup: float | None = None
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    reused: list[str] = field(default_factory=list)  # what came from the result cache: accuracy, latency

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
                "latency_unstable": lat.unstable if lat else None, "reused": list(self.reused),
                "labels": self.labels, "foreground_iou": self.foreground_iou, "worst_image": self.worst_image,
                "worst_image_name": self.worst_image_name,
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
    as it goes (about 3 MB a 512x512 input: a whole split is not held). ``data``: a VOC folder (masks),
    or a folder of images without masks (``masks`` then yields None: every row is scored against the
    reference row's masks, ``labels`` "fp32")."""

    def __init__(self, data: "Path | DataSource", pre: Preprocess, num_classes: int, limit: int | None) -> None:
        ds = open_data(data, "val")
        self.labelled, self.labels = ds.labelled, ds.labels
        self.samples = ds.samples[:limit] if limit else ds.samples
        self.split_size = len(ds.samples)  # the whole split, of which ``samples`` are the first
        self.inputs = _Streamed(self.samples, lambda s: pre(load_image(s.image))[None])
        self.masks = _Streamed(self.samples, lambda s: None if s.mask is None else load_mask(s.mask, num_classes))
        self.sizes = _Streamed(self.samples, lambda s: image_size(s.image))  # (width, height), from the header
        for s in self.samples:  # fail now on a missing, mislabelled or missized mask, not after the first rows
            if s.mask is None:
                image_size(s.image)
            else:
                load_mask(s.mask, num_classes, image_size(s.image))
        self.pre = pre
        self.num_classes = num_classes
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        """The images' and masks' identity (names and contents), computed once."""
        if self._digest is None:
            self._digest = samples_digest(self.samples, self.num_classes)
        return self._digest


class LogitStore:
    """The reference's logits of every measured image, one ``.npy`` file each in a private temporary
    folder, so that every row's max |logit difference| is over all the images its accuracy is (one
    definition, as ``quantize`` measures it) while memory holds one image's logits: 64 maps of 21
    classes at 512x512 are 1.4 GB, which a laptop or a Jetson should not hold for a table."""

    def __init__(self) -> None:
        self._dir = TempFolder("aspp-deploy-logits-")  # pid-stamped and locked: a killed run's is cleaned
        self.count = 0

    def _path(self, i: int) -> Path:
        return Path(self._dir.name) / f"{i:06d}.npy"

    def put(self, i: int, logits: np.ndarray) -> None:
        np.save(self._path(i), np.asarray(logits, dtype=np.float32), allow_pickle=False)
        self.count = max(self.count, i + 1)

    def get(self, i: int) -> np.ndarray:
        return np.load(self._path(i), allow_pickle=False)

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        self._dir.cleanup()


def measure_accuracy(row: Row, runner, val: ValidationSet, classes: list[str], reference: Row | None,
                     ref_logits: LogitStore | None,
                     progress: Callable[[int, int], None] | None = None,
                     timings: list[float] | None = None, keep: LogitStore | None = None) -> None:
    """Fill ``row``'s accuracy figures (against ``reference`` and its ``ref_logits`` when given).
    ``keep`` receives this row's logits (the reference's pass). ``timings`` receives each synchronised
    ``infer`` call's milliseconds (the model alone, as ``bench_runner`` times it)."""
    cm = ConfusionMatrix(len(classes))
    bf = BoundaryF()
    agree = total = 0
    max_diff: float | None = None
    row.labels, row.image_scores = val.labels, []
    worst: tuple[float, float, str] | None = None  # (drop against the reference, score, name)
    for i, (x, mask) in enumerate(zip(val.inputs, val.masks)):
        t0 = time.perf_counter_ns()
        out = runner.infer(x)
        if timings is not None:
            runner.synchronize()
            timings.append((time.perf_counter_ns() - t0) / 1e6)
        if mask is None:
            w, h = val.sizes[i]
            shape = (h, w)
        else:
            shape = mask.shape
        pred = to_mask_size(class_ids(out, runner.info.outputs_class_ids)[0], shape, val.pre).astype(np.uint8)
        if mask is None:  # no labels: the reference row's masks are the truth (its own, for the reference)
            mask = pred if reference is None else reference.predictions[i]
        cm.update(mask, pred)
        score = image_score(mask, pred, len(classes))
        row.image_scores.append(score)
        ref_score = reference.image_scores[i] if reference is not None and i < len(reference.image_scores) else 1.0
        drop = ref_score - score if reference is not None else 1.0 - score
        if worst is None or (drop, -score) > (worst[0], -worst[1]):
            worst = (drop, score, val.samples[i].name)
        if reference is None or i < KEPT_PREDICTIONS:  # the reference keeps all: every row is compared with it
            row.predictions.append(pred)
        if reference is not None:
            ref = reference.predictions[i]
            agree += int((ref == pred).sum())
            total += ref.size
            bf.update(ref, pred)
        if not runner.info.outputs_class_ids:
            if keep is not None:
                keep.put(i, out)
            if ref_logits is not None and i < len(ref_logits):
                diff = float(np.abs(np.asarray(out, dtype=np.float32) - ref_logits.get(i)).max())
                max_diff = diff if max_diff is None else max(max_diff, diff)
        if progress:
            progress(i + 1, len(val.inputs))
    iou = cm.iou()
    row.miou = cm.miou()
    row.per_class_iou = {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)}
    row.foreground_iou = cm.foreground_iou()
    row.worst_image, row.worst_image_name = (worst[1], worst[2]) if worst else (None, None)
    if reference is not None:
        row.pixel_agreement = agree / total if total else None
        row.boundary_f = bf.score()
        row.delta_miou = row.miou - (reference.miou or 0.0)
        row.max_abs_logit_diff = max_diff


ACCURACY_FIELDS = ("miou", "per_class_iou", "delta_miou", "pixel_agreement", "boundary_f", "max_abs_logit_diff",
                   "labels", "foreground_iou", "image_scores", "worst_image", "worst_image_name")


def _store_accuracy(cache: ResultCache, key: dict, row: Row) -> None:
    arrays = {f"pred{i}": p for i, p in enumerate(row.predictions[:KEPT_PREDICTIONS])}
    cache.put(key, {f: getattr(row, f) for f in ACCURACY_FIELDS} | {"predictions": len(arrays)}, arrays)


def _restore_accuracy(row: Row, cached: Cached) -> bool:
    """Fill ``row`` from a cache entry; False (row untouched) when the entry lacks a field."""
    r = cached.result
    n = r.get("predictions")
    if any(f not in r for f in ACCURACY_FIELDS) or not isinstance(n, int) \
            or any(f"pred{i}" not in cached.arrays for i in range(n)):
        return False
    for f in ACCURACY_FIELDS:
        setattr(row, f, r[f])
    row.predictions = [cached.arrays[f"pred{i}"] for i in range(n)]
    return True


def _store_latency(cache: ResultCache, key: dict, bench: BenchResult, batch: int) -> None:
    cache.put(key, {"samples_ms": bench.samples_ms, "batch": batch})


def _restore_latency(cached: Cached) -> BenchResult | None:
    samples, batch = cached.result.get("samples_ms"), cached.result.get("batch")
    if not isinstance(samples, list) or not samples or not isinstance(batch, int) \
            or not all(isinstance(v, (int, float)) for v in samples):
        return None
    return BenchResult(latency_stats([float(v) for v in samples], batch), samples_ms=[float(v) for v in samples])


def run_compare(specs: list[RowSpec], val: ValidationSet, classes: list[str], open_runner,
                warmup: int = 5, iters: int = 30, log: Callable[[str], None] = lambda m: None,
                progress_factory=None, cache: ResultCache | None = None,
                row_key: Callable[[RowSpec], dict | None] | None = None,
                latency_key: dict | None = None, reuse_latency: bool = False) -> list[Row]:
    """Run every spec; the first runnable one is the reference (PyTorch FP32).

    ``cache`` with ``row_key`` (what a row's figures depend on; None: not cacheable) reuses accuracy
    figures measured before; ``latency_key`` (the bench settings and the machine), when given, stores
    latencies too, and ``reuse_latency`` reuses them."""
    rows = [Row(s) for s in specs]
    reference: Row | None = None
    ref_logits: LogitStore | None = None  # the reference's logits, on disk
    ref_key: dict | None = None
    ref_complete = False  # the reference's predictions are all in memory and its logits in ref_logits
    stores: list[LogitStore] = []

    def new_store() -> LogitStore:
        stores.append(LogitStore())
        return stores[-1]

    def reference_outputs() -> None:
        """Run the reference again (its figures came from the cache; another row needs its outputs)."""
        nonlocal ref_logits, ref_complete
        assert reference is not None
        log(f"{reference.spec.label}: running it again to compare a row measured anew with it")
        scratch = Row(reference.spec)
        with open_runner(reference.spec) as runner:
            progress = progress_factory(f"{reference.spec.label} (reference)") if progress_factory else None
            ref_logits = new_store()
            measure_accuracy(scratch, runner, val, classes, None, None, progress, keep=ref_logits)
        reference.predictions, ref_complete = scratch.predictions, True

    try:
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
                key = row_key(s) if cache is not None and row_key is not None else None
                acc_key = lat_key = None
                if key is not None and (reference is None or ref_key is not None):
                    acc_key = {"what": "accuracy", "row": key, "reference": ref_key,
                               "max_logit_diff_over": "every measured image"}
                    if latency_key is not None:
                        lat_key = {"what": "latency", "row": key, "bench": latency_key}
                hit = cache.get(acc_key) if cache is not None and acc_key is not None else None
                if hit is not None and _restore_accuracy(row, hit):
                    row.reused.append("accuracy")
                elif acc_key is not None and cache is not None:
                    log(f"{s.label}: measuring accuracy ({cache.why})")
                lat_hit = cache.get(lat_key) if cache is not None and lat_key is not None and reuse_latency else None
                row.bench = _restore_latency(lat_hit) if lat_hit is not None else None
                if row.bench is not None:
                    row.reused.append("latency")
                keep = new_store() if reference is None else None  # the reference's logits, for the others
                if "accuracy" not in row.reused or row.bench is None:
                    if "accuracy" not in row.reused and reference is not None and not ref_complete:
                        reference_outputs()
                    with open_runner(s) as runner:
                        timings: list[float] = []
                        if "accuracy" not in row.reused:
                            progress = progress_factory(s.label) if progress_factory else None
                            measure_accuracy(row, runner, val, classes, reference, ref_logits, progress,
                                             timings if row.bench is None else None, keep=keep)
                            if acc_key is not None and cache is not None:
                                _store_accuracy(cache, acc_key, row)
                        if row.bench is None:
                            x = val.inputs[0]
                            if len(timings) >= warmup + iters and runner.infer_phases(x) is None:
                                # the accuracy pass already ran the model warmup + iters times, one
                                # synchronised image at a time: its calls are the latency samples
                                samples = timings[warmup:warmup + iters]
                                row.bench = BenchResult(latency_stats(samples, int(x.shape[0])), samples_ms=samples)
                            else:
                                row.bench = bench_runner(runner, x, warmup, iters)
                            if lat_key is not None and cache is not None:
                                _store_latency(cache, lat_key, row.bench, int(x.shape[0]))
            except AsppDeployError as exc:
                row.status, row.reason = "unavailable", str(exc)
                continue
            except Exception as exc:  # one broken backend must not hide the others
                row.status, row.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            if s.artifact is not None and s.artifact.is_file():
                row.size_bytes = s.artifact.stat().st_size
            if reference is None:
                reference, ref_key = row, (acc_key or {}).get("row")
                ref_complete = "accuracy" not in row.reused
                ref_logits = keep if ref_complete else None
                row.delta_miou, row.pixel_agreement, row.boundary_f, row.max_abs_logit_diff = 0.0, 1.0, 1.0, 0.0
            reused = f" (reused: {', '.join(row.reused)})" if row.reused else ""
            log(f"{s.label}: mIoU {row.miou:.4f}, p50 {row.bench.end_to_end.p50:.1f} ms{reused}" if row.bench
                else s.label)
    finally:
        for store in stores:
            store.close()
    if reference is not None and reference.bench is not None:
        base = reference.bench.end_to_end.p50
        for row in rows:
            if row.bench is not None:
                row.speedup = base / row.bench.end_to_end.p50
    return rows
