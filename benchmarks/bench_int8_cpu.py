"""INT8 (cpu target) against FP32 in ONNX Runtime on this machine: speed-up and mIoU drop.

On the shipped model at its export size (512x512), batch 1: exports the FP32 ONNX (or reuses an
up-to-date one), makes the cpu-target INT8 ONNX with ``aspp-deploy quantize``'s pipeline (shipped
calibration images, 0.5-point budget), measures both on the whole validation split, then times
both in interleaved rounds in one process. Targets: speed-up >= 1.8x, mIoU drop <= 0.5 points.

    python benchmarks/bench_int8_cpu.py [--artifacts artifacts] [--rounds 5] [--iters 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.bench.rows import variant_is_stale
from aspp_deploy.bench.timing import time_calls
from aspp_deploy.export.ensure import ensure_fp32
from aspp_deploy.model.checkpoint import DEFAULT_CHECKPOINT
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
from aspp_deploy.spec import ModelSpec

SPEEDUP_TARGET, DROP_TARGET = 1.8, 0.5


def ensure_int8_cpu(artifacts: Path, checkpoint: Path = DEFAULT_CHECKPOINT, threads: int = 0,
                    min_accuracy_images: int = 0) -> Path:
    """``artifacts/model.int8-cpu.onnx``, exported and quantized first when missing or stale (or when
    its recorded accuracy covers fewer than ``min_accuracy_images`` images)."""
    fp32 = ensure_fp32(artifacts, ModelSpec(), checkpoint=checkpoint, log=lambda m: print(m, flush=True)).path
    int8 = artifacts / "model.int8-cpu.onnx"
    if not int8.is_file() or variant_is_stale(int8, fp32) or \
            json.loads((artifacts / "manifest.json").read_text())["artifacts"][int8.name]["accuracy"]["num_images"] \
            < min_accuracy_images:
        print("quantizing (cpu target), then measuring accuracy on the whole validation split", flush=True)
        quantized_onnx_from_fp32(fp32, QuantizeOptions("int8", "cpu", threads=threads),
                                 log=lambda m: print(" ", m, flush=True))
    return int8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    fp32 = args.artifacts / "model.onnx"
    int8 = ensure_int8_cpu(args.artifacts, args.checkpoint, args.threads, min_accuracy_images=50)
    entry = json.loads((args.artifacts / "manifest.json").read_text())["artifacts"][int8.name]
    acc, budget = entry["accuracy"], entry["quantization"]["budget"]

    runners = {"fp32": OrtRunner(fp32, threads=args.threads), "int8": OrtRunner(int8, threads=args.threads)}
    shape = [d if isinstance(d, int) else 1 for d in runners["fp32"].session.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, runner in runners.items():
            samples[name] += time_calls(lambda: runner.infer(x), args.warmup, args.iters)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} median {statistics.median(v):.1f} ms" for k, v in samples.items()), flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in samples.items()}
    speedup = med["fp32"] / med["int8"]
    drop = -acc["delta_miou_points"]
    print(f"\nmodel {args.checkpoint.name}, input {shape}, ONNX Runtime CPU, "
          f"{args.threads or os.cpu_count()} thread(s), {args.rounds * args.iters} timed calls each")
    for k in runners:
        print(f"  {k:5s} p50 {med[k]:8.1f} ms   p90 {p90[k]:8.1f} ms")
    print(f"speed-up INT8 vs FP32: {speedup:.2f}x (target >= {SPEEDUP_TARGET}x): "
          f"{'met' if speedup >= SPEEDUP_TARGET else 'NOT met'}")
    print(f"mIoU on {acc['num_images']} val images: FP32 {100 * acc['miou_fp32']:.2f}, INT8 {100 * acc['miou']:.2f}, "
          f"drop {drop:.2f} points (target <= {DROP_TARGET}): {'met' if drop <= DROP_TARGET else 'NOT met'}")
    print(f"pixel agreement with FP32 {acc['pixel_agreement']:.4f}; kept in higher precision: "
          f"{[k['group'] for k in budget['kept_in_higher_precision']] or 'nothing'}")
    if args.json:
        args.json.write_text(json.dumps({"median_ms": med, "p90_ms": p90, "speedup": speedup,
                                         "miou_drop_points": drop, "accuracy": acc, "shape": shape}, indent=2))


if __name__ == "__main__":
    main()
