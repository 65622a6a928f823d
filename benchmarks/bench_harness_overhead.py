"""Harness overhead of ``aspp-deploy bench``: our timing loop against a bare ``session.run`` loop.

Both loops drive the same ONNX Runtime session on the same input, interleaved in rounds (ours,
bare, ours, bare, ...) so that clock drift and thermal state hit both alike. The overhead is
(median of our per-call times) / (median of the bare per-call times) - 1; the target is <= 2 %.

    python benchmarks/bench_harness_overhead.py [--onnx artifacts/model.onnx] [--rounds 5] [--iters 40]

Without --onnx it exports the shipped checkpoint to artifacts/model.onnx first (or reuses it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.bench.timing import time_calls

TARGET = 0.02


def bare_loop(session, feed: dict, output: str, warmup: int, iters: int) -> list[float]:
    """The reference: nothing but session.run between two clock reads."""
    for _ in range(warmup):
        session.run([output], feed)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        session.run([output], feed)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def default_onnx() -> Path:
    from aspp_deploy.export.ensure import ensure_fp32
    from aspp_deploy.model.checkpoint import DEFAULT_CHECKPOINT
    from aspp_deploy.spec import ModelSpec

    return ensure_fp32(Path("artifacts"), ModelSpec(), checkpoint=DEFAULT_CHECKPOINT).path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    onnx = args.onnx or default_onnx()
    runner = OrtRunner(onnx, threads=args.threads)
    shape = [d if isinstance(d, int) else 1 for d in runner.session.get_inputs()[0].shape]
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {runner.input_name: batch}
    ours: list[float] = []
    bare: list[float] = []
    for r in range(args.rounds):
        ours += time_calls(lambda: runner.infer(batch), args.warmup, args.iters, runner.synchronize)
        bare += bare_loop(runner.session, feed, runner.output_name, args.warmup, args.iters)
        print(f"round {r + 1}/{args.rounds}: ours median {statistics.median(ours):.3f} ms, "
              f"bare median {statistics.median(bare):.3f} ms", flush=True)
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    overhead = m_ours / m_bare - 1
    print(f"model {onnx} input {shape}, {len(ours)} calls each")
    print(f"median per call: ours {m_ours:.3f} ms, bare session.run {m_bare:.3f} ms")
    print(f"harness overhead: {100 * overhead:+.2f} % (target <= {100 * TARGET:.0f} %): "
          f"{'met' if overhead <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
