"""Runs ModelOpt in a child process: ``python -m aspp_deploy.precision._modelopt_worker JOB.json``.

Why a child process: ModelOpt's ONNX quantizer patches ONNX Runtime's quantization modules in
place (it deletes operators from ``QDQRegistry`` and replaces calibrator methods), which would
silently change every later ``quantize_static`` call in the same process (the ``--target cpu``
recipe, or the next test). A child process keeps ONNX Runtime pristine here.

The job file is JSON: ``{"jobs": [...]}``; each job is
``{"op": "int8", "onnx", "out", "calib", "method", "cache", "exclude", "high_precision"}`` or
``{"op": "fp16", "onnx", "out", "calib", "exclude"}`` (``calib``: an ``.npz`` of inputs for int8,
a folder of one ``.npz`` per batch for fp16).
On failure the last line of stderr is the reason and the exit code is 1.
"""

from __future__ import annotations

import json
import logging
import re
import sys


def _disable_fake_tensorrt() -> None:
    """A ``tensorrt`` that imports but is not TensorRT (the ``tensorrt-stubs`` type stubs install
    an empty namespace package) makes ModelOpt call ``trt.Logger`` and crash: tell it there is none."""
    import modelopt.onnx.trt_utils as trt_utils

    if getattr(trt_utils, "TRT_PYTHON_AVAILABLE", False) and not hasattr(trt_utils.trt, "Logger"):
        trt_utils.TRT_PYTHON_AVAILABLE = False


def _patterns(names: list[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


def run_job(job: dict) -> None:
    if job["op"] == "int8":
        import numpy as np
        from modelopt.onnx.quantization import quantize

        calib = dict(np.load(job["calib"]))

        quantize(job["onnx"], quantize_mode="int8", calibration_data=calib,
                 calibration_method=job["method"], calibration_cache_path=job.get("cache"),
                 calibration_eps=["cpu"], nodes_to_exclude=_patterns(job.get("exclude", [])),
                 high_precision_dtype=job["high_precision"], dq_only=True, output_path=job["out"],
                 log_level="ERROR")
    elif job["op"] == "fp16":
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision

        model = convert_to_mixed_precision(
            onnx_path=job["onnx"], low_precision_type="fp16", keep_io_types=True,
            nodes_to_exclude=_patterns(job.get("exclude", [])) or None, calibration_data=job["calib"],
            providers=["cpu"])
        onnx.save(model, job["out"])
    else:
        raise ValueError(f"unknown job {job['op']!r}")


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)
    try:
        jobs = json.loads(open(argv[1]).read())["jobs"]
        _disable_fake_tensorrt()
        for job in jobs:
            run_job(job)
    except Exception as exc:  # the parent turns this line into one clear error
        print(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
