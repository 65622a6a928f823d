"""Synchronised timing of any runner, with warm-up; phases kept apart.

The runner's own ``infer_phases`` (GPU backends) splits host-to-device copy, compute and
device-to-host copy with device events, as trtexec reports them; CPU backends have one phase.
Pre-processing (decode, resize, normalise) and post-processing (argmax, resize to the mask)
are timed separately on real images, so the model figure is the model alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from aspp_deploy.backends.base import Runner, class_ids
from aspp_deploy.bench.stats import LatencyStats, latency_stats, round_medians, rounds_drift, rounds_unstable
from aspp_deploy.data.voc import load_image
from aspp_deploy.eval.evaluate import to_mask_size
from aspp_deploy.runtime.preprocess import Preprocess


@dataclass
class BenchResult:
    end_to_end: LatencyStats            # one synchronised infer call, copies included
    phases: dict[str, LatencyStats] = field(default_factory=dict)  # h2d / compute / d2h on GPU
    preprocess: LatencyStats | None = None
    postprocess: LatencyStats | None = None
    samples_ms: list[float] = field(default_factory=list)
    # interleaved rounds (``compare``): each round's samples, when its block of calls started (ms
    # from the first round's start) and which run measured them (rounds pair only within one run)
    rounds_ms: list[list[float]] = field(default_factory=list)
    started_ms: list[float] = field(default_factory=list)
    run: str | None = None

    @classmethod
    def from_rounds(cls, rounds_ms: list[list[float]], batch: int, started_ms: list[float] | None = None,
                    run: str | None = None) -> "BenchResult":
        """The latency of interleaved rounds: statistics over all the rounds' samples together."""
        samples = [float(v) for r in rounds_ms for v in r]
        return cls(latency_stats(samples, batch), samples_ms=samples,
                   rounds_ms=[[float(v) for v in r] for r in rounds_ms], started_ms=list(started_ms or []), run=run)

    @property
    def unstable(self) -> bool:
        """High spread: over the rounds when there are rounds (``stats.rounds_unstable``), else over
        the samples (``LatencyStats.unstable``)."""
        return rounds_unstable(self.rounds_ms) if self.rounds_ms else self.end_to_end.unstable

    def to_dict(self) -> dict:
        d = {"end_to_end": self.end_to_end.to_dict(),
             "phases": {k: v.to_dict() for k, v in self.phases.items()},
             "preprocess": self.preprocess.to_dict() if self.preprocess else None,
             "postprocess": self.postprocess.to_dict() if self.postprocess else None,
             "samples_ms": self.samples_ms}
        if self.rounds_ms:
            d.update(rounds_ms=self.rounds_ms, round_p50_ms=round_medians(self.rounds_ms),
                     rounds_drift=rounds_drift(self.rounds_ms), started_ms=self.started_ms, run=self.run)
        return d


def time_calls(fn: Callable[[], object], warmup: int, iters: int, sync: Callable[[], None] = lambda: None
               ) -> list[float]:
    """Milliseconds per call, synchronised inside the timed region, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        sync()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def bench_runner(runner: Runner, batch: np.ndarray, warmup: int = 10, iters: int = 50,
                 images: list[Path] | None = None, pre: Preprocess | None = None) -> BenchResult:
    if iters < 1 or warmup < 0:
        raise ValueError("--iters must be >= 1 and --warmup >= 0")
    n = batch.shape[0]
    samples = time_calls(lambda: runner.infer(batch), warmup, iters, runner.synchronize)
    result = BenchResult(latency_stats(samples, n), samples_ms=samples)
    result.phases = phase_stats(runner, batch, iters)
    if images and pre is not None:
        imgs = images[: max(1, min(len(images), 8))]
        pre_ms = time_calls(lambda: [pre(load_image(p)) for p in imgs], 1, 3)
        result.preprocess = latency_stats([t / len(imgs) for t in pre_ms], 1)
        out = runner.infer(batch)
        size = load_image(imgs[0]).size[::-1]  # (H, W) of a real image: what a user maps back to
        post_ms = time_calls(lambda: _postprocess(out, runner.info.outputs_class_ids, size, pre), 1, 10)
        result.postprocess = latency_stats([t / n for t in post_ms], 1)
    return result


def phase_stats(runner: Runner, batch: np.ndarray, iters: int) -> dict[str, LatencyStats]:
    """GPU runners: host-to-device, compute and device-to-host statistics over ``iters`` calls of
    ``infer_phases`` (device events); {} where the runner has no such split (CPU)."""
    if runner.infer_phases(batch) is None:
        return {}
    per_phase: dict[str, list[float]] = {}
    for _ in range(iters):
        for k, v in (runner.infer_phases(batch) or {}).items():
            per_phase.setdefault(k, []).append(v)
    return {k: latency_stats(v, batch.shape[0]) for k, v in per_phase.items()}


def _postprocess(output: np.ndarray, outputs_class_ids: bool, size: tuple[int, int], pre: Preprocess) -> np.ndarray:
    return np.stack([to_mask_size(p, size, pre) for p in class_ids(output, outputs_class_ids)])
