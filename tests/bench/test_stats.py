import numpy as np
import pytest

from aspp_deploy.bench.stats import latency_stats
from aspp_deploy.bench.timing import time_calls


def test_percentiles_on_known_samples():
    s = latency_stats(list(range(1, 101)))  # 1..100 ms
    # linear interpolation between order statistics: position q*(n-1)
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert (s.min, s.max, s.n) == (1, 100, 100)
    assert s.mean == pytest.approx(50.5)
    assert s.std == pytest.approx(np.sqrt(sum((x - 50.5) ** 2 for x in range(1, 101)) / 99))
    assert s.throughput == pytest.approx(1000 / 50.5)


def test_batch_throughput_and_instability():
    s = latency_stats([10.0] * 20, batch=4)
    assert s.throughput == pytest.approx(400.0) and not s.unstable
    assert latency_stats([10.0] * 19 + [100.0]).unstable


def test_time_calls_counts_and_synchronises():
    calls, syncs = [], []
    out = time_calls(lambda: calls.append(1), warmup=3, iters=5, sync=lambda: syncs.append(1))
    assert len(out) == 5 and len(calls) == 8 and len(syncs) == 6 and all(t >= 0 for t in out)


def test_empty_samples_refused():
    with pytest.raises(ValueError):
        latency_stats([])
