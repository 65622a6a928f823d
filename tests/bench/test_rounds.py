"""compare's latency rounds (``aspp_deploy.bench.rounds``) and the paired-ratio arithmetic
(``aspp_deploy.bench.stats``), on real callables that sleep: their costs and cost ratios are known,
their timings are not. Assertions are on structure, order and loose bounds, never on tight timings, so
that a loaded 2-core machine does not fail them."""

from __future__ import annotations

import time

import pytest

from aspp_deploy.bench.rounds import Contestant, round_orders, run_rounds
from aspp_deploy.bench.stats import (UNSTABLE_ROUNDS, latency_stats, paired_ratios, round_medians, rounds_drift,
                                     rounds_unstable)
from aspp_deploy.bench.timing import BenchResult


def _predecessors(order):
    return {k: (order[i - 1] if i else None) for i, k in enumerate(order)}


@pytest.mark.parametrize("keys", [list("ABCDEFG"), ["A", "B"], ["A", "B", "C"]])
def test_round_orders_are_seeded_permutations_and_no_key_keeps_its_predecessor(keys):
    orders = round_orders(keys, 8, seed=0)
    assert orders == round_orders(keys, 8, seed=0)  # the same orders on every run
    assert len(orders) == 8 and all(sorted(o) == sorted(keys) for o in orders)
    for before, after in zip(orders, orders[1:]):
        was = _predecessors(before)
        assert all(was[k] != p for k, p in _predecessors(after).items()), (before, after)
    if len(keys) == 2:
        assert orders[:3] == [orders[0], orders[0][::-1], orders[0]]  # A B, B A, A B ...
    if len(keys) == 7:  # another seed, other orders; and not one order over and over
        assert round_orders(keys, 8, seed=1) != orders and len({tuple(o) for o in orders}) == 8
    assert round_orders(["A"], 3) == [["A"]] * 3


def _sleeper(ms: float, calls: list, name: str, load: list[float] | None = None) -> Contestant:
    def call():
        calls.append(name)
        time.sleep(ms * (load[0] if load else 1.0) / 1000)

    return Contestant(call)


def test_rounds_interleave_every_contestant_and_time_each_call():
    calls: list[str] = []
    syncs: list[str] = []
    contestants = {"fast": _sleeper(2, calls, "fast"), "slow": _sleeper(8, calls, "slow"),
                   "mid": _sleeper(4, calls, "mid")}
    contestants["mid"].sync = lambda: syncs.append("mid")
    done: list[tuple[int, int]] = []
    res = run_rounds(contestants, rounds=5, iters=3, warmup=2, seed=0, on_round=lambda i, n: done.append((i, n)),
                     rewarm=1)
    assert done == [(i, 5) for i in range(1, 6)] and not res.failed
    # warm-up first (2 calls each, untimed), then per round each contestant's block, in the round's
    # order: 1 untimed call and 3 timed ones back to back
    assert calls[:6] == [k for k in res.orders[0] for _ in range(2)]
    assert calls[6:] == [k for order in res.orders for k in order for _ in range(1 + 3)]
    assert res.orders == round_orders(list(contestants), 5, seed=0)
    assert len(syncs) == 1 + 5 * (1 + 3)  # after the warm-up, after each block's untimed call, in each timed one
    for name, ms in (("fast", 2), ("mid", 4), ("slow", 8)):
        assert [len(r) for r in res.samples[name]] == [3] * 5
        assert all(t >= ms * 0.99 for r in res.samples[name] for t in r)  # a sleep lasts at least its time
    # the blocks really interleave: every block of round k started before any block of round k + 1,
    # and within a round in the recorded order
    for k in range(4):
        assert max(res.started[n][k] for n in contestants) < min(res.started[n][k + 1] for n in contestants)
    for k, order in enumerate(res.orders):
        assert sorted(contestants, key=lambda n: res.started[n][k]) == order
    # the slow one is slower than the fast one in every round's median; 4x in cost, so the paired ratio
    # lies above 1 (sleep overshoot on a busy machine only pulls it towards 1, never below)
    ratio = paired_ratios(res.samples["slow"], res.samples["fast"])
    assert len(ratio.rounds) == 5 and ratio.min <= ratio.median <= ratio.max
    assert all(r > 1.0 for r in ratio.rounds) and ratio.median < 4.5


def test_a_load_that_changes_between_rounds_hits_every_contestant_alike():
    """The machine's load triples on every other round (as when a neighbour's job starts): each
    contestant's own rounds then spread by about 3x, flagged unstable, while the paired per-round ratio
    of two contestants whose costs are 2:1 stays near 2 in every round."""
    load = [1.0]
    calls: list[str] = []
    contestants = {"ref": _sleeper(10, calls, "ref", load), "row": _sleeper(5, calls, "row", load)}

    def next_round(done: int, rounds: int) -> None:
        load[0] = 3.0 if done % 2 else 1.0

    res = run_rounds(contestants, rounds=6, iters=3, warmup=0, on_round=next_round)
    for name in contestants:
        meds = round_medians(res.samples[name])
        assert min(meds[1::2]) > 1.5 * max(meds[0::2]), meds  # the loaded rounds are far slower
        assert rounds_drift(res.samples[name]) > UNSTABLE_ROUNDS and rounds_unstable(res.samples[name])
    ratio = paired_ratios(res.samples["ref"], res.samples["row"])
    assert all(1.2 < r < 2.5 for r in ratio.rounds), ratio
    # unpaired, the reference's quiet round against the row's loaded one says the row is slower
    quiet_ref, loaded_row = round_medians(res.samples["ref"])[0], round_medians(res.samples["row"])[1]
    assert quiet_ref / loaded_row < 1.0


def test_a_contestant_that_fails_is_dropped_with_its_reason_and_the_others_go_on():
    calls: list[str] = []
    count = [0]

    def flaky():
        count[0] += 1
        if count[0] == 6:  # 1 warm-up call, 3 calls in round 1, the second timed call of round 2
            raise RuntimeError("device lost\nsecond line")

    contestants = {"ok": _sleeper(1, calls, "ok"), "flaky": Contestant(flaky)}
    res = run_rounds(contestants, rounds=4, iters=2, warmup=1)
    assert res.failed == {"flaky": "RuntimeError: device lost"}
    assert "flaky" not in res.samples and "flaky" not in res.started
    assert [len(r) for r in res.samples["ok"]] == [2] * 4
    assert res.orders[0] != ["ok"] and all(order == ["ok"] for order in res.orders[1:])  # failed in round 2
    with pytest.raises(ValueError):
        run_rounds(contestants, rounds=0, iters=1)


def test_paired_ratios_are_per_round_medians_divided_then_summarised():
    ref = [[10.0, 12.0, 11.0], [20.0, 22.0, 21.0], [11.0, 11.0, 11.0]]
    row = [[5.0, 5.0, 6.0], [10.0, 11.0, 10.0], [5.5, 4.0, 9.0]]
    r = paired_ratios(ref, row)
    assert r.rounds == pytest.approx((11 / 5, 21 / 10, 11 / 5.5))
    assert r.median == pytest.approx(2.1) and r.min == pytest.approx(2.0) and r.max == pytest.approx(2.2)
    assert r.spread == pytest.approx(0.1 / 2.1)
    assert paired_ratios(ref, ref).rounds == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="same rounds"):
        paired_ratios(ref, row[:2])


def test_unstable_is_computed_from_the_rounds():
    steady = [[10.0, 10.2, 9.9]] * 6
    assert not rounds_unstable(steady) and rounds_drift(steady) == 0.0
    # the load rose for half of the rounds, by 15%: all the samples together look steady (std 7% of the
    # mean, p99 1.15x p50), but the rounds disagree: the p50 depends on when it was measured
    drifted = [[10.0] * 3] * 5 + [[11.5] * 3] * 5
    pooled = latency_stats([v for r in drifted for v in r])
    assert not pooled.unstable and rounds_drift(drifted) == pytest.approx(1.5 / 10.75) and rounds_unstable(drifted)
    # one disturbed round among ten moves neither quartile of the rounds' medians: not unstable for that
    one_off = [[10.0] * 3] * 9 + [[12.5] * 3]
    assert rounds_drift(one_off) == 0.0 and not rounds_unstable(one_off)
    # a single slow call within a round: the samples' own spread (p99 over 1.5x p50)
    assert rounds_unstable([[10.0, 10.0, 10.0]] * 5 + [[10.0, 10.0, 40.0]])
    b = BenchResult.from_rounds(drifted, 1, [float(k) for k in range(10)], "run1")
    assert b.unstable and b.end_to_end.n == 30 and b.samples_ms[:3] == [10.0] * 3
    d = b.to_dict()
    assert d["rounds_ms"] == drifted and d["round_p50_ms"] == [10.0] * 5 + [11.5] * 5 and d["run"] == "run1"
