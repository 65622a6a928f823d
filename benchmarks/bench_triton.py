"""Served on Triton against in-process, same model, same threads, one run: the serving overhead.

Serves the cpu-target INT8 ONNX (made by ``bench_int8_cpu.py``'s ``ensure_int8_cpu`` when it is missing) with
``aspp-deploy triton`` (in-process ONNX Runtime executor, one instance, ``--threads``) on the
tritonserver that ``aspp-deploy serve`` finds, and loads it over gRPC at each concurrency level, with
dynamic batching on (``aspp``) and off (``aspp_nobatch``). The in-process figure is this toolkit's
runner (``OrtSegmenter.predict``) on the same encoded images with the same thread count: decode,
preprocess, ONNX Runtime, post-process, one image after the other, measured before and after the
served sweep (their mean is the reference). Target: the best served throughput is at least 0.85x the
in-process one. Every figure comes from this one run; the CPU and its flags are printed with them.

    python benchmarks/bench_triton.py [--artifacts artifacts] [--threads 2] [--levels 1,2,4,8] [--requests 80]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TARGET = 0.85


def in_process(onnx: Path, images: list[Path], threads: int, rounds: int) -> float:
    """Images per second of the toolkit's own runner, serially (encoded file bytes in, mask out)."""
    import io

    from PIL import Image

    from aspp_deploy.runtime.ort_segmenter import OrtSegmenter

    data = [p.read_bytes() for p in images]
    with OrtSegmenter(onnx, threads=threads) as seg:
        for d in data[:2]:
            seg.predict(Image.open(io.BytesIO(d)))
        start = time.perf_counter()
        for _ in range(rounds):
            for d in data:
                seg.predict(Image.open(io.BytesIO(d)))
        return rounds * len(data) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--onnx", type=Path, help="serve this aspp-deploy ONNX instead of the INT8 cpu-target one")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime threads, both sides")
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=80, help="requests per concurrency level")
    ap.add_argument("--images", type=int, default=8, help="synthetic 512x512 JPEG images to send")
    ap.add_argument("--rounds", type=int, default=6, help="in-process passes over the images, each side")
    ap.add_argument("--env", type=Path, help="the service's Python environment (default: ASPP_TRITON_ENV, "
                                             "else made with `aspp-deploy triton-env` in a temporary folder)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from aspp_deploy.bench.report import cpu_description
    from aspp_deploy.serve.environment import make_env
    from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
    from aspp_deploy.serve.loadtest import Endpoint, load_samples, sweep
    from aspp_deploy.serve.repository import TritonOptions, write_repository
    from aspp_deploy.serve.server import TritonServer, find_server, free_port

    from bench_int8_cpu import ensure_int8_cpu  # the script beside this one

    onnx = args.onnx or ensure_int8_cpu(args.artifacts, threads=args.threads)
    levels = [int(v) for v in args.levels.split(",")]
    cpu, flags = cpu_description()
    print(f"CPU: {cpu}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'none of interest'}")
    print(f"model: {onnx}, threads {args.threads}, load: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp_name:
        tmp = Path(tmp_name)
        images = sorted(write_calibration_folder(tmp / "images", args.images, seed=7,
                                                 cfg=SynthConfig(size=512)).iterdir())
        env = args.env or (Path(os.environ["ASPP_TRITON_ENV"]) if os.environ.get("ASPP_TRITON_ENV") else None)
        if env is None:
            env = tmp / "env"
            print(f"making the service environment ({', '.join(make_env(env))})", flush=True)
        repo = tmp / "repo"
        info = write_repository(onnx, repo, TritonOptions(threads=args.threads, python_env=str(env),
                                                          unbatched_twin=True))
        for note in info.get("notes", []):  # e.g. a static batch of 1: the batcher can only queue
            print(f"note: {note}")
        before = in_process(onnx, images, args.threads, args.rounds)
        server = TritonServer(repo, find_server(), "127.0.0.1", free_port(), free_port(), free_port())
        with server:
            server.wait_ready(300)
            samples = load_samples(images, "image")
            results = sweep([Endpoint("grpc", server.grpc_url)], ["aspp", "aspp_nobatch"], samples, levels,
                            args.requests, 300.0, 60.0, warmup=4, log=lambda m: print(" ", m, flush=True))
        after = in_process(onnx, images, args.threads, args.rounds)
    reference = (before + after) / 2
    print(f"\nin-process ({args.threads} threads): {before:.2f} img/s before, {after:.2f} after, mean {reference:.2f}")
    print("| model | clients | req/s | p50 ms | p90 ms | p99 ms | errors | served / in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.model} | {r.concurrency} | {r.throughput:.2f} | {r.p50_ms or 0:.1f} | {r.p90_ms or 0:.1f} | "
              f"{r.p99_ms or 0:.1f} | {r.errors} | {r.throughput / reference:.2f} |")
    best = {m: max((r for r in results if r.model == m), key=lambda r: r.throughput) for m in ("aspp", "aspp_nobatch")}
    ratio = best["aspp"].throughput / reference
    batching = best["aspp"].throughput / best["aspp_nobatch"].throughput
    print(f"\nbest served (dynamic batching, {best['aspp'].concurrency} clients): {best['aspp'].throughput:.2f} req/s "
          f"= {ratio:.2f}x in-process (target >= {TARGET}): {'met' if ratio >= TARGET else 'NOT met'}")
    print(f"dynamic batching on / off at their best concurrency: {batching:.2f}x "
          f"({best['aspp'].throughput:.2f} vs {best['aspp_nobatch'].throughput:.2f} req/s)")
    errors = sum(r.errors for r in results)
    if args.json:
        args.json.write_text(json.dumps({
            "cpu": cpu, "flags": flags, "threads": args.threads, "model": str(onnx), "in_process": [before, after],
            "rows": [{k: v for k, v in r.__dict__.items() if k != "latencies_ms"} for r in results],
            "served_over_in_process": ratio, "batching_on_over_off": batching}, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
