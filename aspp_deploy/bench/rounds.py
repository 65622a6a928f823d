"""Interleaved latency rounds: every contestant runs once per round, in a new order each round.

A speed-up is only honest when both of its latencies saw the same machine: on a shared or
throttling machine, two figures measured minutes apart differ by the load, not by the model. So
the contestants (``compare``'s rows) are warmed up, then timed in ``rounds``: in each round every
contestant runs ``iters`` synchronised calls back to back, and the next round starts only when all
of them have run. A contestant's latency is then all its rounds' samples, and a ratio between two
contestants is taken per round (``stats.paired_ratios``), where both saw the same minute.

Each block opens with one untimed call (``REWARM``): the first call after another contestant ran
pays for that one's footprint (the caches it filled, its threads going back to sleep), 10-40% more
in the median on a 2-core machine, which a model running on its own never pays; timed, it would make
every row look unstable and tie each figure to whichever row ran before it.

The order within a round is shuffled with a fixed seed (as Google Benchmark's random interleaving
does), drawn so that no contestant follows the same one (or opens the round) twice in a row: a
contestant that always ran right after a heavy one would always pay for its cache misses or its
lingering threads. The orders are recorded, and so is when each block of calls started, so that a
report can show the interleaving rather than assert it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)

# ``compare``'s defaults: 2 warm-up calls per row, then 6 rounds of 1 untimed + 3 timed calls (18
# samples per row, six paired ratios per speed-up): 26 calls per row, about the 27 of a single
# block of 3 warm-up + 24 timed calls
DEFAULT_WARMUP, DEFAULT_ROUNDS, DEFAULT_ITERS = 2, 6, 3
REWARM = 1  # untimed calls opening each contestant's block in every round
SEED = 0  # the rounds' orders are drawn from this seed: the same orders on every run
METHOD = (f"interleaved rounds, shuffled order, {REWARM} untimed call opening each block, "
          "paired per-round ratios")  # how a latency was measured: part of its cache key
ORDER_DRAWS = 200  # shuffles tried for a round before one that repeats a predecessor is accepted


@dataclass
class Contestant:
    """One thing to time: ``call`` does one unit of work; ``sync`` waits for it to finish (a GPU's
    queue), inside the timed region as ``timing.time_calls`` does."""

    call: Callable[[], object]
    sync: Callable[[], None] = lambda: None


@dataclass
class RoundsResult(Generic[K]):
    orders: list[list[K]] = field(default_factory=list)            # per round, the keys in the order they ran
    samples: dict[K, list[list[float]]] = field(default_factory=dict)  # key -> per round, its calls' ms
    started: dict[K, list[float]] = field(default_factory=dict)    # key -> per round, ms from the first
    failed: dict[K, str] = field(default_factory=dict)              # round's start to its block's start


def _predecessors(order: list) -> dict:
    """What ran right before each key in a round (None: it opened the round)."""
    return {k: (order[i - 1] if i else None) for i, k in enumerate(order)}


def round_orders(keys: list[K], rounds: int, seed: int = 0) -> list[list[K]]:
    """``rounds`` orders of ``keys``: the first shuffled, each next one shuffled again until no key
    has the predecessor it had in the round before (with two keys: A B, B A, A B ...). Deterministic
    for a seed; with one key, or when no such order turns up in ``ORDER_DRAWS`` draws, the last draw."""
    rng = random.Random(seed)
    orders: list[list[K]] = []
    for _ in range(rounds):
        order = list(keys)
        rng.shuffle(order)
        if orders and len(keys) > 1:
            before = _predecessors(orders[-1])
            for _ in range(ORDER_DRAWS):
                if all(before[k] != p for k, p in _predecessors(order).items()):
                    break
                rng.shuffle(order)
        orders.append(order)
    return orders


def failure_reason(exc: BaseException) -> str:
    """``RuntimeError: the first line of its message`` (at most 200 characters of it)."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_rounds(contestants: dict[K, Contestant], rounds: int, iters: int, warmup: int = 0, seed: int = 0,
               on_round: Callable[[int, int], None] | None = None, rewarm: int = REWARM,
               clock: Callable[[], int] = time.perf_counter_ns) -> RoundsResult[K]:
    """Warm every contestant up (``warmup`` untimed calls each, in the first round's order), then
    time ``rounds`` interleaved rounds: in each, every contestant runs ``rewarm`` untimed calls and
    then ``iters`` timed, synchronised ones. ``started`` records when each block began.

    A contestant whose call raises is dropped with its reason in ``failed`` (and its samples with it);
    the others go on. ``on_round(done, rounds)`` is called after each round."""
    if rounds < 1 or iters < 1 or warmup < 0 or rewarm < 0:
        raise ValueError("rounds and iters must be >= 1, warmup and rewarm >= 0")
    orders = round_orders(list(contestants), rounds, seed)
    result: RoundsResult[K] = RoundsResult(samples={k: [] for k in contestants},
                                           started={k: [] for k in contestants})

    def drop(key: K, exc: Exception) -> None:
        result.failed[key] = failure_reason(exc)
        result.samples.pop(key, None)
        result.started.pop(key, None)

    for key in orders[0]:
        c = contestants[key]
        try:
            for _ in range(warmup):
                c.call()
            c.sync()
        except Exception as exc:  # one broken contestant must not stop the others
            drop(key, exc)
    t0 = clock()
    for r, order in enumerate(orders):
        ran: list[K] = []
        for key in order:
            if key in result.failed:
                continue
            c = contestants[key]
            result.started[key].append((clock() - t0) / 1e6)
            times = []
            try:
                for _ in range(rewarm):
                    c.call()
                c.sync()
                for _ in range(iters):
                    t = clock()
                    c.call()
                    c.sync()
                    times.append((clock() - t) / 1e6)
            except Exception as exc:
                drop(key, exc)
                continue
            result.samples[key].append(times)
            ran.append(key)
        result.orders.append(ran)
        if on_round:
            on_round(r + 1, rounds)
    return result
