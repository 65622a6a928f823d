"""``compare``: every backend x precision on the same validation images and latency bench,
measured against PyTorch FP32. A row that cannot run here stays in the table with its reason.

Latency is measured after every row's accuracy, in interleaved rounds (``bench.rounds``): every
row that ran is warmed up, then in each round every row runs ``iters`` timed synchronised calls on
the same input, in a new order each round; a row's latency is all its rounds' samples, and its
speed-up is the reference's median over the row's median *in the same round*, summarised as the
median of the rounds' ratios with their range (``stats.paired_ratios``). So a speed-up never
compares two measurements minutes apart on a machine whose load changed between them. Runners
stay open from their accuracy pass to the rounds, except when an artifact has to be made
(quantized, built): the open runners are closed first, so that the maker gets their memory, and
reopened for the rounds.

Nothing is measured twice: with a ``ResultCache`` (``ARTIFACTS/result-cache/``) a row's accuracy
figures and first predictions are stored under a key of what they depend on (``row_key``: the
artifact's sha256 or the PyTorch source's fingerprint, the data's digest, the preprocessing, the
backend/precision settings; for the figures against the reference, the reference's key too) and
reused only where the key matches exactly. Its latency is measured every time unless asked to be
reused too (then keyed further by the bench settings, the rounds included, and the machine); a
reused latency keeps its rounds and the id of the run that measured them, and pairs with the
reference by round only when the reference's latency comes from that same run. When any row is
timed, the reference is timed with it, so that every speed-up measured now is paired. A row whose
figures all come from the cache does not even open its runner; a row that misses while the
reference's came from the cache runs the reference once more to compare with it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aspp_deploy.backends.base import Runner, class_ids
from aspp_deploy.bench.result_cache import Cached, ResultCache, samples_digest
from aspp_deploy.bench.rounds import (DEFAULT_ITERS, DEFAULT_ROUNDS, DEFAULT_WARMUP, SEED, Contestant, failure_reason,
                                      run_rounds)
from aspp_deploy.bench.stats import PairedRatio, paired_ratios
from aspp_deploy.bench.timing import BenchResult, phase_stats
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
    speedup_rounds: PairedRatio | None = None  # the per-round ratios behind ``speedup`` (None: not paired)
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    reused: list[str] = field(default_factory=list)  # what came from the result cache: accuracy, latency

    def to_dict(self) -> dict:
        s = self.spec
        lat = self.bench.end_to_end if self.bench else None
        ratio = self.speedup_rounds
        return {"backend": s.backend, "precision": s.precision, "device": s.device,
                "artifact": str(s.artifact) if s.artifact else None, "note": s.note,
                "status": self.status, "reason": self.reason, "size_bytes": self.size_bytes,
                "miou": self.miou, "delta_miou": self.delta_miou, "pixel_agreement": self.pixel_agreement,
                "boundary_f": self.boundary_f, "max_abs_logit_diff": self.max_abs_logit_diff,
                "p50_ms": lat.p50 if lat else None, "p99_ms": lat.p99 if lat else None,
                "throughput": lat.throughput if lat else None, "speedup": self.speedup,
                "speedup_min": ratio.min if ratio else None, "speedup_max": ratio.max if ratio else None,
                "speedup_paired": (ratio is not None) if self.speedup is not None else None,
                "speedup_rounds": list(ratio.rounds) if ratio else None,
                "latency_rounds": len(self.bench.rounds_ms) if self.bench else None,
                "latency_unstable": self.bench.unstable if self.bench else None, "reused": list(self.reused),
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
                     progress: Callable[[int, int], None] | None = None, keep: LogitStore | None = None) -> None:
    """Fill ``row``'s accuracy figures (against ``reference`` and its ``ref_logits`` when given).
    ``keep`` receives this row's logits (the reference's pass)."""
    cm = ConfusionMatrix(len(classes))
    bf = BoundaryF()
    agree = total = 0
    max_diff: float | None = None
    row.labels, row.image_scores = val.labels, []
    worst: tuple[float, float, str] | None = None  # (drop against the reference, score, name)
    for i, (x, mask) in enumerate(zip(val.inputs, val.masks)):
        out = runner.infer(x)
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
    cache.put(key, {"rounds_ms": bench.rounds_ms, "started_ms": bench.started_ms, "run": bench.run, "batch": batch})


def _restore_latency(cached: Cached) -> BenchResult | None:
    r = cached.result
    rounds, started, run, batch = r.get("rounds_ms"), r.get("started_ms"), r.get("run"), r.get("batch")
    number = (int, float)
    if not isinstance(rounds, list) or not rounds or not isinstance(batch, int) or not isinstance(run, str) \
            or not all(isinstance(x, list) and x and all(isinstance(v, number) for v in x) for x in rounds) \
            or not isinstance(started, list) or not all(isinstance(v, number) for v in started):
        return None
    return BenchResult.from_rounds(rounds, batch, [float(v) for v in started], run)


def latency_orders(rows: list[Row]) -> list[list[str]]:
    """The order the rows timed in this run ran in, round by round, from when each row's block of
    calls started (what happened, not what was planned); rows whose latency was reused are not in it."""
    timed = [r for r in rows if r.bench is not None and r.bench.started_ms and "latency" not in r.reused]
    orders = []
    for k in range(max((len(r.bench.started_ms) for r in timed if r.bench), default=0)):
        here = sorted((r.bench.started_ms[k], r.spec.label) for r in timed if r.bench and k < len(r.bench.started_ms))
        orders.append([label for _, label in here])
    return orders


def _speedups(rows: list[Row]) -> None:
    """Each ok row's speed-up against the first ok row (the reference): paired by round when both were
    timed in the same run, else (a latency reused from another run) the ratio of their p50s."""
    reference = next((r for r in rows if r.status == "ok"), None)
    if reference is None or reference.bench is None:
        return
    ref = reference.bench
    for row in rows:
        b = row.bench
        if row.status != "ok" or b is None:
            continue
        if b.run is not None and b.run == ref.run and len(b.rounds_ms) == len(ref.rounds_ms) > 0:
            row.speedup_rounds = paired_ratios(ref.rounds_ms, b.rounds_ms)
            row.speedup = row.speedup_rounds.median
        else:
            row.speedup_rounds, row.speedup = None, ref.end_to_end.p50 / b.end_to_end.p50


def run_compare(specs: list[RowSpec], val: ValidationSet, classes: list[str], open_runner,
                warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS, log: Callable[[str], None] = lambda m: None,
                progress_factory=None, cache: ResultCache | None = None,
                row_key: Callable[[RowSpec], dict | None] | None = None,
                latency_key: dict | None = None, reuse_latency: bool = False, rounds: int = DEFAULT_ROUNDS,
                rounds_progress: Callable[[int, int], None] | None = None, seed: int = SEED) -> list[Row]:
    """Run every spec; the first runnable one is the reference (PyTorch FP32).

    Accuracy row by row, then latency: ``warmup`` untimed calls per row, then ``rounds`` interleaved
    rounds of ``iters`` timed calls per row (``rounds_progress(done, rounds)`` after each).
    ``cache`` with ``row_key`` (what a row's figures depend on; None: not cacheable) reuses accuracy
    figures measured before; ``latency_key`` (the bench settings and the machine), when given, stores
    latencies too, and ``reuse_latency`` reuses them."""
    if rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError("rounds and iters must be >= 1 and warmup >= 0")
    rows = [Row(s) for s in specs]
    reference: Row | None = None
    ref_logits: LogitStore | None = None  # the reference's logits, on disk
    ref_key: dict | None = None
    ref_complete = False  # the reference's predictions are all in memory and its logits in ref_logits
    stores: list[LogitStore] = []
    held: dict[int, Runner] = {}  # row index -> its runner, open from its accuracy pass to the rounds
    lat_keys: dict[int, dict] = {}  # row index -> the key its latency is stored under

    def new_store() -> LogitStore:
        stores.append(LogitStore())
        return stores[-1]

    def release() -> None:
        """Close the open runners (reopened for the rounds): an artifact is about to be made."""
        for runner in held.values():
            runner.close()
        held.clear()

    def hold(i: int, runner: Runner) -> None:
        """Keep ``runner`` open for the rounds when row ``i`` is to be timed, else close it."""
        if rows[i].bench is None:
            held[i] = runner
        else:
            runner.close()

    def reference_outputs() -> None:
        """Run the reference again (its figures came from the cache; another row needs its outputs)."""
        nonlocal ref_logits, ref_complete
        assert reference is not None
        log(f"{reference.spec.label}: running it again to compare a row measured anew with it")
        scratch = Row(reference.spec)
        runner = open_runner(reference.spec)
        try:
            progress = progress_factory(f"{reference.spec.label} (reference)") if progress_factory else None
            ref_logits = new_store()
            measure_accuracy(scratch, runner, val, classes, None, None, progress, keep=ref_logits)
        except BaseException:
            runner.close()
            raise
        hold(next(k for k, r in enumerate(rows) if r is reference), runner)
        reference.predictions, ref_complete = scratch.predictions, True

    try:
        for i, row in enumerate(rows):
            s = row.spec
            if s.unavailable:
                row.status, row.reason = "unavailable", s.unavailable
                continue
            try:
                if s.artifact is not None and (s.refresh or not s.artifact.is_file()):
                    if s.produce is None:
                        raise AsppDeployError(f"{s.artifact} is missing")
                    release()
                    log(f"{'remaking out-of-date' if s.refresh else 'making'} {s.artifact.name} ...")
                    s.artifact = s.produce()
                key = row_key(s) if cache is not None and row_key is not None else None
                acc_key = None
                if key is not None and (reference is None or ref_key is not None):
                    acc_key = {"what": "accuracy", "row": key, "reference": ref_key,
                               "max_logit_diff_over": "every measured image"}
                    if latency_key is not None:
                        lat_keys[i] = {"what": "latency", "row": key, "bench": latency_key}
                hit = cache.get(acc_key) if cache is not None and acc_key is not None else None
                if hit is not None and _restore_accuracy(row, hit):
                    row.reused.append("accuracy")
                elif acc_key is not None and cache is not None:
                    log(f"{s.label}: measuring accuracy ({cache.why})")
                lat_hit = cache.get(lat_keys[i]) if cache is not None and i in lat_keys and reuse_latency else None
                row.bench = _restore_latency(lat_hit) if lat_hit is not None else None
                if row.bench is not None:
                    row.reused.append("latency")
                keep = new_store() if reference is None else None  # the reference's logits, for the others
                if "accuracy" not in row.reused:
                    if reference is not None and not ref_complete:
                        reference_outputs()
                    runner = open_runner(s)
                    try:
                        progress = progress_factory(s.label) if progress_factory else None
                        measure_accuracy(row, runner, val, classes, reference, ref_logits, progress, keep=keep)
                    except BaseException:
                        runner.close()
                        raise
                    hold(i, runner)
                    if acc_key is not None and cache is not None:
                        _store_accuracy(cache, acc_key, row)
            except AsppDeployError as exc:
                row.status, row.reason = "unavailable", str(exc)
                continue
            except Exception as exc:  # one broken backend must not hide the others
                row.status, row.reason = "failed", failure_reason(exc)
                continue
            if s.artifact is not None and s.artifact.is_file():
                row.size_bytes = s.artifact.stat().st_size
            if reference is None:
                reference, ref_key = row, (acc_key or {}).get("row")
                ref_complete = "accuracy" not in row.reused
                ref_logits = keep if ref_complete else None
                row.delta_miou, row.pixel_agreement, row.boundary_f, row.max_abs_logit_diff = 0.0, 1.0, 1.0, 0.0
            reused = f" (reused: {', '.join(row.reused)})" if row.reused else ""
            log(f"{s.label}: mIoU {row.miou:.4f}{reused}")
        _time_rows(rows, held, open_runner, val, warmup, rounds, iters, seed, log, rounds_progress, cache, lat_keys)
    finally:
        release()
        for store in stores:
            store.close()
    _speedups(rows)
    return rows


def _time_rows(rows: list[Row], held: dict[int, Runner], open_runner, val: ValidationSet, warmup: int, rounds: int,
               iters: int, seed: int, log: Callable[[str], None], rounds_progress, cache: ResultCache | None,
               lat_keys: dict[int, dict]) -> None:
    """The latency rounds of every ok row without a reused latency (and of the reference with them,
    even when its latency was reused: a speed-up pairs only within one run). ``held`` holds the
    runners still open from the accuracy passes; the others are opened here. Every call runs the first
    validation image. A row whose latency cannot be measured keeps its accuracy figures, with the
    reason in ``reason``."""
    ok = [i for i, r in enumerate(rows) if r.status == "ok"]
    todo = [i for i in ok if rows[i].bench is None]
    if not todo:
        return
    if ok[0] not in todo:
        ref = rows[ok[0]]
        log(f"{ref.spec.label}: timed again with the rows measured now (its cached latency is from another run)")
        ref.bench = None
        ref.reused.remove("latency")
        todo.insert(0, ok[0])
    x = val.inputs[0]
    contestants: dict[int, Contestant] = {}
    for i in todo:
        try:
            runner = held[i] if i in held else open_runner(rows[i].spec)
        except Exception as exc:
            rows[i].reason = f"latency not measured: {failure_reason(exc)}"
            continue
        held[i] = runner
        contestants[i] = Contestant(lambda r=runner: r.infer(x), runner.synchronize)
    run = uuid.uuid4().hex[:12]
    log(f"latency: {len(contestants)} rows, {warmup} warm-up calls each, then {rounds} rounds of {iters} timed "
        f"calls per row, in a new order every round")
    result = run_rounds(contestants, rounds, iters, warmup, seed, rounds_progress)
    batch = int(x.shape[0])
    for i, why in result.failed.items():
        rows[i].reason = f"latency not measured: {why}"
    for i, samples in result.samples.items():
        row = rows[i]
        try:
            phases = phase_stats(held[i], x, rounds * iters)
        except Exception as exc:
            row.reason = f"latency not measured: {failure_reason(exc)}"
            continue
        row.bench = BenchResult.from_rounds(samples, batch, result.started[i], run)
        row.bench.phases = phases
        if cache is not None and i in lat_keys:
            _store_latency(cache, lat_keys[i], row.bench, batch)
