"""Peak resident memory and wall time of each command on the shipped defaults, each in a fresh process.

    python benchmarks/bench_memory.py [--out DIR] [--only NAME ...] [--skip NAME ...] [--calib-size N]
                                      [--with-compare] [--json FILE]

Runs ``export`` once into ``--out`` (a temporary folder by default), then every command on that
model: FP16, INT8 for TensorRT with ONNX Runtime's quantizer (``--backend ort``) and with ModelOpt
(``--backend modelopt``, when the quant extra is installed), INT8 for the CPU, ``eval`` and
``bench`` on ONNX Runtime and OpenVINO (when installed), and ``compare`` with ``--with-compare``
(several minutes). INT8 runs use ``--no-cache`` so that calibration really runs.

Each command runs in its own process under ``/usr/bin/time -v`` when it exists (its "Maximum
resident set size"), else under a small Python parent that reads ``getrusage(RUSAGE_CHILDREN)``;
both count the command's children (the ModelOpt worker) too. Prints one table (command, peak
RSS, wall time, exit status) and the CPU model and flags. The goal in issue 13 is at most
2.5 GB for every command whatever the number of calibration or validation images; the script
reports, it does not judge.

Set ``PYTHONPATH`` to another checkout to measure that one with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from aspp_deploy.cli import main; main()"]
PEAK_OF_CHILD = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print(f"__peak_kib__ {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(rc)
"""


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, float | None]:
    """(exit code, wall seconds, peak RSS in MiB) of ``cmd`` in a fresh process."""
    timer = shutil.which("time") if Path("/usr/bin/time").exists() else None
    wrapped = ["/usr/bin/time", "-v", *cmd] if timer else [sys.executable, "-c", PEAK_OF_CHILD, *cmd]
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(wrapped, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    peak = None
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        peak = int(m.group(1)) / 1024
    elif m := re.search(r"__peak_kib__ (\d+)", text):
        peak = int(m.group(1)) / 1024
    if timer and (m := re.search(r"Exit status: (\d+)", text)):
        rc = int(m.group(1))
    return rc, wall, peak


def commands(out: Path, calib_size: int, with_compare: bool) -> list[tuple[str, list[str]]]:
    from aspp_deploy.precision.modelopt_backend import modelopt_available

    try:
        from aspp_deploy.backends.openvino_backend import openvino_unavailable_reason
    except ImportError:  # a checkout from before the OpenVINO backend (PYTHONPATH)
        def openvino_unavailable_reason() -> str | None:
            return "no OpenVINO backend in this checkout"

    m = out / "model.onnx"
    calib = ["--calib-size", str(calib_size)] if calib_size else []
    cmds = [
        ("export", ["export", "--out", str(out)]),
        ("quantize fp16", ["quantize", "--onnx", str(m), "--precision", "fp16"]),
        ("quantize int8 trt (ort)", ["quantize", "--onnx", str(m), "--precision", "int8", "--target", "trt",
                                     "--backend", "ort", "--no-cache", *calib]),
    ]
    if modelopt_available():
        cmds.append(("quantize int8 trt (modelopt)", ["quantize", "--onnx", str(m), "--precision", "int8", "--target",
                                                      "trt", "--backend", "modelopt", "--no-cache", *calib,
                                                      "--out", str(out / "model.int8-trt-modelopt.onnx")]))
    cmds += [
        ("quantize int8 cpu", ["quantize", "--onnx", str(m), "--precision", "int8", "--target", "cpu",
                               "--no-cache", *calib]),
        ("eval onnxruntime", ["eval", "--backend", "onnxruntime", "--model", str(m)]),
        ("eval torch", ["eval", "--backend", "torch"]),
        ("bench onnxruntime", ["bench", "--backend", "onnxruntime", "--model", str(m)]),
    ]
    if openvino_unavailable_reason() is None:
        cmds += [("eval openvino", ["eval", "--backend", "openvino", "--model", str(m)]),
                 ("bench openvino", ["bench", "--backend", "openvino", "--model", str(m)])]
    if with_compare:
        cmds.append(("compare", ["compare", "--artifacts", str(out), "--report", str(out / "report")]))
    return cmds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="artifacts folder (default: a temporary one)")
    ap.add_argument("--only", nargs="*", default=[], help="run only commands whose name contains one of these")
    ap.add_argument("--skip", nargs="*", default=[], help="skip commands whose name contains one of these")
    ap.add_argument("--calib-size", type=int, default=0, help="calibration images for INT8 (0: the default)")
    ap.add_argument("--with-compare", action="store_true", help="also run compare (several minutes)")
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="aspp-bench-memory-")
        out = Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "bench-memory-logs"
    logs.mkdir(exist_ok=True)
    rows = []
    for name, cmd in commands(out, args.calib_size, args.with_compare):
        if name != "export" and ((args.only and not any(k in name for k in args.only))
                                 or any(k in name for k in args.skip)):
            continue
        if name == "export" and (out / "model.onnx").is_file() and args.only and "export" not in args.only:
            continue
        log = logs / (re.sub(r"\W+", "_", name).strip("_") + ".log")
        rc, wall, peak = run_measured(CLI + cmd, log)
        rows.append({"command": name, "argv": cmd, "exit": rc, "wall_s": round(wall, 1),
                     "peak_rss_mib": None if peak is None else round(peak)})
        print(f"{name:32s} peak {peak or float('nan'):8.0f} MiB  wall {wall:7.1f} s  exit {rc}", flush=True)
        if name == "export" and rc != 0:
            print(f"export failed, see {log}", file=sys.stderr)
            break

    from aspp_deploy.bench.report import cpu_description

    model, flags = cpu_description()
    print()
    print(f"CPU: {model}, {os.cpu_count()} logical cores; flags: {' '.join(flags) or 'none of interest'}")
    print(f"{'command':32s} {'peak RSS (MiB)':>15s} {'wall (s)':>9s} {'exit':>5s}")
    for r in rows:
        peak = "?" if r["peak_rss_mib"] is None else str(r["peak_rss_mib"])
        print(f"{r['command']:32s} {peak:>15s} {r['wall_s']:>9.1f} {r['exit']:>5d}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": model, "flags": flags, "cores": os.cpu_count(), "rows": rows},
                                        indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
