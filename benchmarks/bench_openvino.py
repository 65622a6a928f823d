"""OpenVINO against ONNX Runtime on the same ONNX files, interleaved in one run: FP32 and the
cpu-target INT8 (Q/DQ) model. Prints latency ratios measured in this run (never absolute pass
marks), optionally the mIoU of each runtime on each file, and the CPU's model and flags.

    python benchmarks/bench_openvino.py [--artifacts artifacts] [--threads 2] [--repeats 4]
                                        [--iters 20] [--warmup 5] [--miou-images 50] [--with-bf16]
                                        [--also LABEL=FILE ...]

``--artifacts`` must hold ``model.onnx`` and ``model.int8-cpu.onnx`` (``aspp-deploy export`` then
``aspp-deploy quantize --onnx artifacts/model.onnx --precision int8 --target cpu``, or one
``aspp-deploy compare``). Every repeat times each (file, runtime) pair once, in turn, so that a
change in machine load hits all pairs alike; each ratio is reported as the median and range over
the repeats. ``--with-bf16`` adds OpenVINO with its default precision hint on this CPU (bf16 on
AVX-512 BF16 / AMX CPUs), the trap the backend avoids by pinning f32. ``--also nncf=model.int8-nncf.onnx``
times another file of the same model the same way (how NNCF's INT8 placement compares with ours
is a measurement, not a dependency: quantize with NNCF in an environment of its own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def median_ms(runner, x: np.ndarray, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        runner.infer(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--miou-images", type=int, default=0, help="also measure mIoU on this many val images (0: no)")
    ap.add_argument("--with-bf16", action="store_true", help="add OpenVINO with its default precision hint")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=FILE",
                    help="another ONNX of the same model to time the same way (e.g. an NNCF INT8 model)")
    args = ap.parse_args()

    from aspp_deploy.backends.onnxruntime_backend import OrtRunner
    from aspp_deploy.backends.openvino_backend import OpenVinoRunner, openvino_unavailable_reason
    from aspp_deploy.export.manifest import read_onnx_manifest

    if reason := openvino_unavailable_reason():
        print(f"error: {reason}", file=sys.stderr)
        return 1
    files = {"fp32": args.artifacts / "model.onnx", "int8 (cpu QDQ)": args.artifacts / "model.int8-cpu.onnx"}
    for item in args.also:
        label, sep, path = item.partition("=")
        if not sep:
            print(f"error: --also {item}: expected LABEL=FILE", file=sys.stderr)
            return 1
        files[label] = Path(path)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        print(f"error: missing {', '.join(missing)}: run `aspp-deploy export` and `aspp-deploy quantize "
              "--precision int8 --target cpu` (or `aspp-deploy compare`) first", file=sys.stderr)
        return 1

    import openvino as ov

    default_hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    default_hint = getattr(default_hint, "get_type_name", lambda: str(default_hint))()
    pre = read_onnx_manifest(files["fp32"]).preprocess()
    x = pre.random_input(1)
    runners = {}
    for label, path in files.items():
        runners[(label, "onnxruntime")] = OrtRunner(path, threads=args.threads)
        runners[(label, "openvino f32")] = OpenVinoRunner(path, threads=args.threads)
        if args.with_bf16:
            runners[(label, f"openvino {default_hint} (default hint)")] = OpenVinoRunner(
                path, threads=args.threads, inference_precision=default_hint)
    for r in runners.values():
        for _ in range(args.warmup):
            r.infer(x)
    samples: dict[tuple[str, str], list[float]] = {k: [] for k in runners}
    for rep in range(args.repeats):
        for key, r in runners.items():
            samples[key].append(median_ms(r, x, args.iters))
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k[0]}/{k[1]} {v[-1]:.1f} ms"
                                                               for k, v in samples.items()), flush=True)

    miou = {}
    if args.miou_images:
        from aspp_deploy.eval.evaluate import ensure_default_data, evaluate

        root = ensure_default_data()
        classes = read_onnx_manifest(files["fp32"]).classes
        for key, r in runners.items():
            miou[key] = evaluate(r, root, pre, classes, limit=args.miou_images).miou

    base = samples[("fp32", "onnxruntime")]

    def ratio(a: list[float], b: list[float]) -> str:
        rs = [x / y for x, y in zip(a, b)]
        return f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})"

    from aspp_deploy.bench.report import cpu_description

    model, flags = cpu_description()
    print()
    print(f"CPU: {model}, {os.cpu_count()} logical cores, {args.threads} thread(s); "
          f"flags: {' '.join(flags) or 'none of interest'}; OpenVINO {ov.__version__}, default CPU hint {default_hint}")
    print(f"{args.repeats} interleaved repeats x {args.iters} runs, batch 1, {pre.height}x{pre.width}; "
          "ratios are latency ratios, median (range) over the repeats")
    head = f"{'file':16s} {'runtime':32s} {'vs ORT same file':>20s} {'vs ORT FP32':>20s}"
    print(head + (f" {'mIoU':>8s}" if miou else ""))
    for key, s in samples.items():
        label, runtime = key
        line = f"{label:16s} {runtime:32s} {ratio(s, samples[(label, 'onnxruntime')]):>20s} {ratio(s, base):>20s}"
        if miou:
            line += f" {miou[key]:8.4f}"
        print(line)
    for r in runners.values():
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
