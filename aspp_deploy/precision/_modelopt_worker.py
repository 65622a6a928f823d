"""Runs ModelOpt in a child process: ``python -m aspp_deploy.precision._modelopt_worker JOB.json``.

Why a child process: ModelOpt's ONNX quantizer patches ONNX Runtime's quantization modules in
place (it deletes operators from ``QDQRegistry`` and replaces calibrator methods), which would
silently change every later ``quantize_static`` call in the same process (the ``--target cpu``
recipe, or the next test). A child process keeps ONNX Runtime pristine here.

The job file is JSON: ``{"jobs": [...]}``; each job is
``{"op": "int8", "onnx", "out", "calib", "calib_input", "calib_batch", "method", "cache", "exclude",
"high_precision"}`` or ``{"op": "fp16", "onnx", "out", "calib", "exclude"}`` (``calib``: an ``.npy``
of stacked inputs for int8, read one batch at a time by ``NpyBatchReader`` so that memory does
not grow with the number of calibration images (an ``.npz`` is still accepted and loaded whole);
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


def npy_batch_reader(path: str, input_name: str, batch: int):
    """An ONNX Runtime ``CalibrationDataReader`` over a stacked ``.npy`` file that reads one batch
    at a time with plain file reads (no memory map: mapped pages would count as resident)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
            else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}: Fortran-ordered calibration arrays are not supported")
    per_item = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    batches = shape[0] // batch

    class NpyBatchReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self):
            if self._next >= batches:
                return None
            with open(path, "rb") as f:
                f.seek(offset + self._next * batch * per_item * dtype.itemsize)
                arr = np.fromfile(f, dtype=dtype, count=batch * per_item).reshape((batch, *shape[1:]))
            self._next += 1
            return {input_name: arr}

        def rewind(self) -> None:
            self._next = 0

        def __len__(self) -> int:
            return batches

    return NpyBatchReader()


def _stream_autocast_reference() -> None:
    """AutoCast's reference run keeps every tensor of every calibration batch (``MARK_ALL``) before
    reducing them to per-tensor statistics: 8 batches of the shipped 512x512 model peaked at 2.6 GB.
    Here each batch of a folder of ``.npz`` files is run alone and reduced at once, with the same
    reduction (``TensorStats``: |max|, min, max, shape) that AutoCast applies across batches, so
    the statistics and hence the FP16 decisions are the same, with one batch in memory. Left as it
    is where this ModelOpt release differs from the one this was written against."""
    import os
    from collections import OrderedDict

    import numpy as np

    try:
        from modelopt.onnx.autocast import referencerunner as rr
    except ImportError:
        return
    runner_cls, stats_cls = getattr(rr, "ReferenceRunner", None), getattr(rr, "TensorStats", None)
    if runner_cls is None or stats_cls is None or getattr(runner_cls.run, "_aspp_streaming", False):
        return
    original = runner_cls.run

    def run(self, inputs=None):
        if not (isinstance(inputs, str) and os.path.isdir(inputs)):
            return original(self, inputs)
        files = sorted(f for f in os.listdir(inputs) if f.endswith(".npz"))
        if len(files) < 2:
            return original(self, inputs)
        merged: OrderedDict = OrderedDict()
        for name in files:
            with np.load(os.path.join(inputs, name)) as z:
                batch = OrderedDict((k, z[k]) for k in z.files)
            raw = original(self, batch)  # one batch: the raw arrays (inputs and every tensor)
            for key, data in raw.items():
                data = np.asarray(data)
                absmax = np.max(np.abs(data)) if data.size > 0 else 0
                lo = np.min(data) if data.size > 0 else 0
                hi = np.max(data) if data.size > 0 else 0
                old = merged.get(key)
                merged[key] = stats_cls(absmax=absmax, min_val=lo, max_val=hi, shape=data.shape) if old is None \
                    else stats_cls(absmax=max(old.absmax, absmax), min_val=min(old.min_val, lo),
                                   max_val=max(old.max_val, hi), shape=old.shape)
            del raw
        return merged

    run._aspp_streaming = True  # type: ignore[attr-defined]
    runner_cls.run = run


def run_job(job: dict) -> None:
    if job["op"] == "int8":
        import numpy as np
        from modelopt.onnx.quantization import quantize

        if str(job["calib"]).endswith(".npy"):
            calib, reader = None, npy_batch_reader(job["calib"], job["calib_input"], int(job.get("calib_batch", 1)))
        else:
            calib, reader = dict(np.load(job["calib"])), None

        quantize(job["onnx"], quantize_mode="int8", calibration_data=calib, calibration_data_reader=reader,
                 calibration_method=job["method"], calibration_cache_path=job.get("cache"),
                 calibration_eps=["cpu"], nodes_to_exclude=_patterns(job.get("exclude", [])),
                 high_precision_dtype=job["high_precision"], dq_only=True, output_path=job["out"],
                 log_level="ERROR")
    elif job["op"] == "fp16":
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision

        _stream_autocast_reference()

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
