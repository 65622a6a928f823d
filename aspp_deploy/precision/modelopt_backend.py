"""NVIDIA ModelOpt (``nvidia-modelopt``, the reference tool for TensorRT explicit quantization
and for FP16 AutoCast), driven from a child process (see ``_modelopt_worker``).

Installation that works beside the CPU ``onnxruntime``: ``pip install nvidia-modelopt`` *without*
the ``[onnx]`` extra (that extra pulls ``onnxruntime-gpu``, which breaks ``onnxruntime``), plus the
pure-Python pieces ``modelopt.onnx`` imports: onnx-graphsurgeon, onnxslim, polygraphy,
onnxconverter-common, onnxscript, ml_dtypes, lief and cppimport (the ``quant`` extra).
Calibration then runs on ONNX Runtime's CPU provider.

INT8 (``--target trt``): ModelOpt's default TensorRT placement (Conv inputs and weights, pooling
inputs, the residual input of each Add; symmetric int8, per-channel weights on axis 0, weights
stored as int8 with DequantizeLinear only). ModelOpt writes opset 19; with FP32 as the high
precision every node is also valid at opset 17, so the graph is converted down with
``onnx.version_converter`` and then parses on TensorRT 8.5/8.6 as well. With FP16 as the high
precision its Q/DQ scales are float16, which opset 17 cannot express: that file stays at opset 19
and is for TensorRT 10 and later only (the manifest's ``trt_versions`` says so per file).
"""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import sys
from importlib import util
from pathlib import Path

import numpy as np
import onnx

from aspp_deploy.errors import AsppDeployError, MissingDependencyError
from aspp_deploy.export.fused_io import keep_fused_float
from aspp_deploy.io import atomic_write_text
from aspp_deploy.precision.cache import CacheLookup
from aspp_deploy.runtime.calibration import CalibrationData

OPSET_FOR_TRT8 = 17
MODELOPT_METHODS = {"entropy": "entropy", "minmax": "max"}


class QuantizationError(AsppDeployError):
    """The quantizer itself failed on this model."""


@functools.lru_cache(maxsize=1)
def modelopt_available() -> bool:
    """Whether ``modelopt.onnx`` can be imported (checked without importing it here)."""
    if util.find_spec("modelopt") is None:
        return False
    probe = "import modelopt.onnx.quantization, modelopt.onnx.autocast"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def run_worker(jobs: list[dict], work: Path) -> None:
    job_file = work / f"modelopt-jobs-{len(list(work.glob('modelopt-jobs-*')))}.json"
    job_file.write_text(json.dumps({"jobs": jobs}))
    proc = subprocess.run([sys.executable, "-m", "aspp_deploy.precision._modelopt_worker", str(job_file)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        if "ModuleNotFoundError" in reason or "ImportError" in reason:
            raise MissingDependencyError(f"ModelOpt cannot run here ({reason}); install the `quant` extra")
        raise QuantizationError(f"ModelOpt failed: {reason}")


def save_calibration(data: CalibrationData, path: Path, limit: int | None = None) -> Path:
    """The calibration inputs as one ``.npy`` file (full batches only, at most ``limit`` images),
    written one batch at a time: neither this process nor the worker, which reads it back batch
    by batch (``_modelopt_worker.NpyBatchReader``), ever holds more than a batch."""
    batches = len(data) if limit is None else max(1, min(len(data), limit // data.batch_size))
    first = data.batch(0)
    shape = (batches * data.batch_size, *first.shape[1:])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=first.dtype, shape=shape)  # uint8 for fused I/O
    try:
        for i in range(batches):
            b = first if i == 0 else data.batch(i)
            out[i * data.batch_size:(i + 1) * data.batch_size] = b
            out.flush()
    finally:
        del out
    return path


def to_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto | None:
    """The same graph at ``opset`` if every node is valid there, else None."""
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current <= opset:
        return model
    try:
        converted = version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception:  # the converter raises several types; any means "not expressible"
        return None
    return converted


_CANONICAL_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL,
                    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                    onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32,
                    onnx.TensorProto.UINT64}


def canonical_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store every constant tensor's values as raw bytes, whichever tool made it: the same values then
    serialise to the same bytes (ModelOpt writes a scale it calibrated as ``float_data`` and one read
    from a calibration cache as ``raw_data``, so the same model would get two sha256)."""
    from onnx import numpy_helper

    def fix(t: onnx.TensorProto) -> None:
        if t.raw_data or t.data_type not in _CANONICAL_TYPES or t.data_location == onnx.TensorProto.EXTERNAL:
            return
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))

    def walk(graph: onnx.GraphProto) -> None:
        for t in graph.initializer:
            fix(t)
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    fix(a.t)
                elif a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g)

    walk(model.graph)
    return model


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Tensor name -> scale of every activation QuantizeLinear (per-tensor)."""
    inits = {t.name: t for t in model.graph.initializer}
    scales = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            s = onnx.numpy_helper.to_array(inits[n.input[1]])
            if s.size == 1:
                scales[n.input[0]] = float(s.reshape(()))
    return scales


def write_scale_table(scales: dict[str, float], path: Path, method: str) -> None:
    """TensorRT's calibration-cache text layout (header, then ``tensor: big-endian float32 hex``),
    the format ModelOpt's ``calibration_cache_path`` reads."""

    header = "TRT-8501-EntropyCalibration2" if method == "entropy" else "TRT-8501-MinMaxCalibration"
    lines = [header] + [f"{name}: {struct.pack('!f', s).hex()}" for name, s in sorted(scales.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


class ModelOptInt8Builder:
    """INT8 TensorRT candidates from ModelOpt; ranges computed once, then read from the cache."""

    def __init__(self, fp32: Path, work: Path, calib: CalibrationData, method: str, cache: CacheLookup,
                 high_precision: str = "fp32") -> None:
        if method not in MODELOPT_METHODS:
            raise QuantizationError(f"ModelOpt calibrates with entropy or minmax, not {method}")
        self.fp32, self.work, self.calib, self.method = fp32, work, calib, method
        self.high_precision, self.cache = high_precision, cache
        self.table = cache.payload or work / "scales.trt-cache.txt"
        self.calibrated = bool(cache.hit)
        self.notes: list[str] = []

    def graph(self) -> onnx.ModelProto:
        return onnx.load(str(self.fp32))

    def build(self, exclude: list[str], out: Path) -> None:
        raw = self.work / f"{out.stem}.modelopt.onnx"
        # Once the ranges are known, ModelOpt still wants a reader: one image is enough, its
        # ranges are replaced by the cached scales.
        calib = save_calibration(self.calib, self.work / "calib-full.npy") if not self.calibrated \
            else save_calibration(self.calib, self.work / "calib-one.npy", limit=self.calib.batch_size)
        job = {"op": "int8", "onnx": str(self.fp32), "out": str(raw), "calib": str(calib),
               "calib_input": self.calib.input_name, "calib_batch": self.calib.batch_size,
               "method": MODELOPT_METHODS[self.method], "exclude": keep_fused_float(exclude, self.graph()),
               "high_precision": self.high_precision,
               "cache": str(self.table) if self.calibrated else None}
        run_worker([job], self.work)
        model = onnx.load(str(raw))
        if not self.calibrated:
            write_scale_table(activation_scales(model), self.table, self.method)
            self.calibrated = True
        low = to_opset(model, OPSET_FOR_TRT8)
        if low is None:
            self.notes.append(f"kept at opset {model.opset_import[0].version}: not expressible at "
                              f"opset {OPSET_FOR_TRT8} (TensorRT 10 and later only)")
            low = model
        onnx.save(canonical_tensors(low), str(out))


class ModelOptFp16Builder:
    """FP16 mixed precision from ModelOpt AutoCast (I/O kept FP32; nodes whose activations
    exceed FP16's safe range on the calibration images are kept FP32 by AutoCast itself)."""

    def __init__(self, fp32: Path, work: Path, calib: CalibrationData, images: int = 8) -> None:
        self.fp32, self.work = fp32, work
        self.calib_file = work / "autocast-inputs"  # one .npz per batch: AutoCast's multi-batch layout
        self.calib_file.mkdir(exist_ok=True)
        for i, batch in enumerate(calib):
            if i * calib.batch_size >= images:
                break
            np.savez(self.calib_file / f"batch{i:04d}.npz", **batch)
        self.notes: list[str] = []

    def graph(self) -> onnx.ModelProto:
        return onnx.load(str(self.fp32))

    def build(self, exclude: list[str], out: Path) -> None:
        raw = self.work / f"{out.stem}.autocast.onnx"
        run_worker([{"op": "fp16", "onnx": str(self.fp32), "out": str(raw), "calib": str(self.calib_file),
                     "exclude": keep_fused_float(exclude, self.graph())}], self.work)
        model = onnx.load(str(raw))
        low = to_opset(model, OPSET_FOR_TRT8)
        onnx.save(canonical_tensors(low if low is not None else model), str(out))
