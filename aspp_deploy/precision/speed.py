"""Is the INT8 file worth having here? Latency of FP32 against the INT8 candidate (and FP16 when
onnxconverter-common can make one in a second) on this machine's CPU runtimes, and the verdict
``quantize --target cpu`` acts on.

Timing: every runtime that can run here (ONNX Runtime; OpenVINO when installed) loads all the
variants, warms each up, then times them in interleaved rounds (``bench.rounds``, as ``compare``
times its rows: every variant once per round, in a new order each round, one untimed call opening
each block) so that each sees the same machine state (a clock change, a neighbour's burst); a
variant's figure is the median of all its timed calls. The comparison is best against best: the fastest
runtime for FP32 against the fastest for INT8, because a user deploys each on whichever suits it.

The verdict (``verdict``, ``quantize --target cpu`` with the budget loop on): an INT8 file is
written only when the mix the budget loop chose meets the accuracy budget, leaves something in INT8
(keeping every group in higher precision is FP32 with extra nodes), and, when speed was measured,
runs faster than FP32 on the best runtime. Otherwise ``NoWorthwhileInt8`` says which of the three
failed and points to FP16: one line, no file. ``--allow-slower`` waives the speed condition, and
without a budget loop (``--budget-images 0``: quantize everything, judge nothing) a slower INT8 is
written with a note.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from aspp_deploy.backends.openvino_backend import openvino_unavailable_reason, OpenVinoRunner
from aspp_deploy.bench.report import cpu_description as report_cpu_description
from aspp_deploy.bench.rounds import REWARM, Contestant, failure_reason, run_rounds
from aspp_deploy.errors import AsppDeployError

DEFAULT_ROUNDS = 7
DEFAULT_ITERS = 5  # timed calls per variant per round
WARMUP = 3
FP16_HINT = "use --precision fp16 (mixed precision keeps the accuracy; INT8 does not pay here)"


class NoWorthwhileInt8(AsppDeployError):
    """No INT8 mix both meets the accuracy budget and runs faster than FP32: no INT8 file."""


@dataclass
class RuntimeTiming:
    runtime: str  # "onnxruntime" or "openvino"
    p50_ms: dict[str, float] = field(default_factory=dict)  # variant -> median latency
    rounds_ms: dict[str, list[float]] = field(default_factory=dict)  # variant -> each round's median
    unavailable: str | None = None  # why this runtime did not run (not installed, cannot load)
    failed: dict[str, str] = field(default_factory=dict)  # variant -> why it could not run here

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "p50_ms": self.p50_ms, "rounds_p50_ms": self.rounds_ms,
                "unavailable": self.unavailable, "failed": self.failed}


@dataclass
class SpeedReport:
    rounds: int
    iters: int
    threads: int
    timings: list[RuntimeTiming] = field(default_factory=list)

    def best(self, variant: str) -> tuple[str, float] | None:
        """(runtime, median ms) of the fastest runtime for ``variant``."""
        found = [(t.runtime, t.p50_ms[variant]) for t in self.timings if variant in t.p50_ms]
        return min(found, key=lambda f: f[1]) if found else None

    def speedup(self, variant: str, against: str = "fp32") -> float | None:
        """How many times faster ``variant`` is than ``against``, best runtime against best runtime."""
        a, b = self.best(variant), self.best(against)
        return b[1] / a[1] if a and b and a[1] > 0 else None

    def summary(self) -> str:
        """``INT8 1.84x FP32 (openvino 2.10 ms vs onnxruntime 3.87 ms); FP16 0.41x``."""
        parts = []
        base = self.best("fp32")
        for v in ("int8", "fp16"):
            b, s = self.best(v), self.speedup(v)
            if b and base and s:
                parts.append(f"{v.upper()} {s:.2f}x FP32 ({b[0]} {b[1]:.2f} ms vs {base[0]} {base[1]:.2f} ms)")
        return "; ".join(parts) or "no timing"

    def to_dict(self) -> dict:
        return {"method": f"interleaved rounds, shuffled order, {REWARM} untimed call opening each block; median of "
                          f"{self.rounds} rounds x {self.iters} calls after {WARMUP} warm-up calls, one image per call",
                "rounds": self.rounds, "iters": self.iters, "threads": self.threads,
                "best": {v: {"runtime": b[0], "p50_ms": b[1]} for v in ("fp32", "int8", "fp16")
                         if (b := self.best(v))},
                "int8_vs_fp32": self.speedup("int8"), "fp16_vs_fp32": self.speedup("fp16"),
                "runtimes": [t.to_dict() for t in self.timings], "cpu": cpu_description()}


def cpu_description() -> dict:
    """The CPU the figures were measured on: model name, logical cores and the SIMD flags that decide
    INT8 (VNNI, AMX) and FP16/BF16 speed (``bench.report.cpu_description``)."""
    import os

    model, flags = report_cpu_description()
    return {"model": model, "cores": os.cpu_count(), "flags": flags}


def fp16_variant(fp32: Path, out: Path) -> Path | None:
    """An FP16 ONNX (FP32 inputs and outputs) to time beside the others, or None when
    onnxconverter-common is not installed or cannot convert this graph."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        return None
    try:
        model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(model, str(out))
    except Exception:  # the converter raises many types for graphs it cannot handle
        return None
    return out


def _runners(runtime: str, threads: int):
    if runtime == "onnxruntime":
        from aspp_deploy.backends.onnxruntime_backend import OrtRunner

        return lambda p: OrtRunner(p, threads=threads)

    reason = openvino_unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    # a private compile cache: the candidates live in a temporary folder that is about to go
    return lambda p: OpenVinoRunner(p, threads=threads, cache_dir=Path(p).parent / "openvino-cache")


def measure(variants: dict[str, Path], batch: np.ndarray, runtimes: tuple[str, ...] = ("onnxruntime", "openvino"),
            rounds: int = DEFAULT_ROUNDS, iters: int = DEFAULT_ITERS, threads: int = 0,
            log: Callable[[str], None] = lambda m: None) -> SpeedReport:
    """Median latency of each variant (name -> ONNX) on each runtime, timed in interleaved rounds."""

    report = SpeedReport(rounds, iters, threads)
    for runtime in runtimes:
        timing = RuntimeTiming(runtime)
        report.timings.append(timing)
        try:
            make = _runners(runtime, threads)
        except (RuntimeError, AsppDeployError) as exc:
            timing.unavailable = str(exc)
            log(f"speed: {runtime} unavailable ({exc})")
            continue
        runners = {}
        try:
            for name, path in variants.items():
                try:
                    runners[name] = make(path)
                except Exception as exc:  # a runtime without kernels for this variant
                    timing.failed[name] = failure_reason(exc)
            # interleaved as compare's rows are: the same machine state for all, a new order each round
            result = run_rounds({name: Contestant(lambda r=runner: r.infer(batch)) for name, runner in runners.items()},
                                rounds, iters, warmup=WARMUP)
            timing.failed.update(result.failed)
            for name, blocks in result.samples.items():
                timing.rounds_ms[name] = [statistics.median(block) for block in blocks]
                timing.p50_ms[name] = statistics.median(ms for block in blocks for ms in block)
        finally:
            for r in runners.values():
                r.close()
        line = ", ".join(f"{n} {ms:.2f} ms" for n, ms in timing.p50_ms.items())
        log(f"speed on {runtime}: {line}" + ("".join(f"; {n} cannot run ({why})" for n, why in timing.failed.items())))
    return report


def verdict(met: bool | None, everything_kept: bool, report: SpeedReport | None, metric: str | None,
            budget_text: str) -> str | None:
    """None when the INT8 candidate is worth writing, else the one line that says why not."""
    if met is False:
        return (f"no INT8 mix meets the accuracy budget ({budget_text} of {metric or 'the task metric'}) even with "
                f"every helpful layer group kept in higher precision: no INT8 file written; {FP16_HINT}")
    if everything_kept:
        return (f"INT8 meets the budget ({budget_text}) only with every layer group kept in higher precision, which "
                f"is FP32 with extra nodes: no INT8 file written; {FP16_HINT}")
    if report is not None:
        s, a, b = report.speedup("int8"), report.best("int8"), report.best("fp32")
        if s is not None and a and b and s <= 1.0:
            return (f"the INT8 mix that meets the budget is not faster than FP32 here ({a[1]:.2f} ms on {a[0]} "
                    f"against {b[1]:.2f} ms on {b[0]}, {s:.2f}x): no INT8 file written; {FP16_HINT} "
                    "(--allow-slower keeps the INT8 file)")
    return None


def slower_note(report: SpeedReport | None) -> str | None:
    """A manifest note when INT8 is not faster than FP32 but was written anyway."""
    s = report.speedup("int8") if report is not None else None
    if report is None or s is None or s > 1.0:
        return None
    return f"INT8 is not faster than FP32 on this machine ({report.summary()}): written as asked"
