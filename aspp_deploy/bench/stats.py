"""Latency statistics from per-iteration samples (milliseconds)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# A figure is flagged unstable when run-to-run spread is this large (trtexec-style warning).
UNSTABLE_CV = 0.10        # std / mean
UNSTABLE_P99_RATIO = 1.5  # p99 / p50
UNSTABLE_ROUNDS = 0.10    # interquartile range of the rounds' medians / their median


@dataclass(frozen=True)
class LatencyStats:
    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    std: float
    batch: int = 1

    @property
    def throughput(self) -> float:
        """Images per second at the mean latency."""
        return 1000.0 * self.batch / self.mean if self.mean > 0 else float("nan")

    @property
    def unstable(self) -> bool:
        return self.std / self.mean > UNSTABLE_CV or self.p99 / self.p50 > UNSTABLE_P99_RATIO

    def spread(self) -> str:
        """How far the timed runs spread: ``std 12.30 ms (15% of the mean), p99 1.80x p50``."""
        cv = self.std / self.mean if self.mean > 0 else float("nan")
        ratio = self.p99 / self.p50 if self.p50 > 0 else float("nan")
        return f"std {self.std:.2f} ms ({100 * cv:.0f}% of the mean), p99 {ratio:.2f}x p50"

    def unstable_warning(self, iters_option: str = "--iters") -> str:
        """One line for the console, with the figure and its spread side by side, and what to do."""
        more = max(200, 4 * self.n)
        return (f"unstable latency: p50 {self.p50:.2f} ms, but {self.spread()} over {self.n} runs "
                f"(stable: std under {100 * UNSTABLE_CV:.0f}% of the mean and p99 under "
                f"{UNSTABLE_P99_RATIO:g}x p50); the machine is busy or throttling: rerun on a quieter "
                f"machine or with more runs ({iters_option} {more})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(throughput=self.throughput, unstable=self.unstable)
        return d


def latency_stats(samples_ms, batch: int = 1) -> LatencyStats:
    """Percentiles by linear interpolation between order statistics (NumPy's default)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyStats(int(a.size), float(a.mean()), float(p50), float(p90), float(p99),
                        float(a.min()), float(a.max()), float(a.std(ddof=1)) if a.size > 1 else 0.0, batch)


def round_medians(rounds_ms) -> list[float]:
    """Each round's median (milliseconds)."""
    return [float(np.median(r)) for r in rounds_ms]


def rounds_drift(rounds_ms) -> float:
    """How far the rounds' medians spread: their interquartile range over their median (0 for one
    round). Robust to one disturbed round, which moves neither quartile much nor the p50 of all the
    rounds' samples; large when the machine's load changed for a good part of the rounds."""
    meds = round_medians(rounds_ms)
    if not meds:
        raise ValueError("no latency rounds")
    q1, mid, q3 = np.percentile(meds, [25, 50, 75])
    return float((q3 - q1) / mid) if mid > 0 else float("nan")


def rounds_unstable(rounds_ms) -> bool:
    """The latency of interleaved rounds is unstable when all the rounds' samples together spread
    widely (``LatencyStats.unstable``: std over 10% of the mean, or p99 over 1.5x p50) or when the
    rounds' medians spread by more than ``UNSTABLE_ROUNDS`` of their median (``rounds_drift``: the
    load changed while they ran)."""
    pooled = latency_stats([v for r in rounds_ms for v in r])
    return pooled.unstable or rounds_drift(rounds_ms) > UNSTABLE_ROUNDS


@dataclass(frozen=True)
class PairedRatio:
    """A ratio of two latencies measured in the same rounds: one ratio per round, summarised by
    their median and their range."""

    rounds: tuple[float, ...]
    median: float
    min: float
    max: float

    @property
    def spread(self) -> float:
        """The largest distance of any round's ratio from the median, as a share of the median."""
        return max(self.median - self.min, self.max - self.median) / self.median if self.median > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"rounds": list(self.rounds), "median": self.median, "min": self.min, "max": self.max,
                "spread": self.spread}


def paired_ratios(numerator_rounds, denominator_rounds) -> PairedRatio:
    """Per round, the numerator's median over the denominator's median (the reference's latency over
    a row's: how many times faster the row is), then their median and range over the rounds. Both
    must hold the same rounds (round i of one ran in the same round as round i of the other)."""
    if len(numerator_rounds) != len(denominator_rounds) or not numerator_rounds:
        raise ValueError(f"paired ratios need the same rounds on both sides "
                         f"({len(numerator_rounds)} and {len(denominator_rounds)})")
    ratios = tuple(a / b for a, b in zip(round_medians(numerator_rounds), round_medians(denominator_rounds)))
    return PairedRatio(ratios, float(np.median(ratios)), min(ratios), max(ratios))


def signed(value: float, digits: int = 4) -> str:
    """``+0.0012`` / ``-0.0012``, and ``+0.0000`` for anything that rounds to zero (never ``-0.0000``)."""
    text = f"{value:+.{digits}f}"
    return f"{0.0:+.{digits}f}" if float(text) == 0 else text
