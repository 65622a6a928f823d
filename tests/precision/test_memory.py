"""Memory of INT8 calibration does not grow with the number of calibration images.

ONNX Runtime's entropy/percentile calibrators, left to themselves, keep every intermediate tensor
of every calibration image (20 GB for the shipped model and 96 images). ``stream_calibrate``
computes the same ranges a chunk at a time: the first tests check the ranges are exactly the
all-at-once ones, the last runs ``quantize`` in fresh processes with 8 and 48 images and compares
their peak resident memory.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
from aspp_deploy.runtime.calibration import CalibrationData, calibration_files, ort_reader
from aspp_deploy.precision.int8_ort import (TRT_OP_TYPES, _calibration_op_types, _calibrator_options,
                                            chunk_batches, stream_calibrate)
from tests.conftest import EXPORT_SIZE


def _all_at_once(model: Path, calib: CalibrationData, method: str, op_types, extra: dict):
    """What ``quantize_static`` computes when it calibrates by itself (every image in memory)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    cm = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
          "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        c = create_calibrator(model, _calibration_op_types(op_types), augmented_model_path=f"{tmp}/a.onnx",
                              calibrate_method=cm, extra_options=_calibrator_options(extra))
        c.collect_data(ort_reader(calib))
        return c.compute_data()


@pytest.mark.parametrize("method, op_types, extra", [
    ("minmax", None, {}),
    ("entropy", TRT_OP_TYPES, {}),
    ("percentile", TRT_OP_TYPES, {"CalibPercentile": 99.99}),
])
def test_streamed_ranges_equal_the_all_at_once_ranges(exported, calib_dir, method, op_types, extra):
    calib = CalibrationData(calibration_files(calib_dir, 0), Preprocess(EXPORT_SIZE, EXPORT_SIZE)).load()
    reference = _all_at_once(exported, calib, method, op_types, extra)
    assert len(reference.keys()) > 20
    for chunk in (1, 3):  # 3 does not divide the 8 images: a short last chunk
        with contextlib.redirect_stdout(io.StringIO()):
            streamed = stream_calibrate(exported, calib, method, op_types, extra, chunk=chunk)
        assert set(streamed.keys()) == set(reference.keys())
        for name in reference.keys():
            want, got = np.asarray(reference[name].range_value), np.asarray(streamed[name].range_value)
            assert np.array_equal(want, got), (method, chunk, name, want, got)


def test_chunk_size_follows_the_byte_budget():
    files = [Path(f"{i}.png") for i in range(100)]
    big = CalibrationData(files, Preprocess(512, 512))
    small = CalibrationData(files, Preprocess(64, 64))
    assert chunk_batches(big) == 2  # ~200 MB of intermediates per 512x512 image, 512 MB budget
    assert chunk_batches(small) == 8  # capped
    assert chunk_batches(CalibrationData(files, Preprocess(4096, 4096))) == 1  # never below one batch


# --- peak memory of the whole command, in fresh processes --------------------------------------

PEAK_OF_CHILD = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if rc.returncode:
    sys.stderr.write(rc.stderr[-2000:])
    sys.exit(rc.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
"""
MEMORY_SIZE = 256  # intermediates of ~50 MB per image: 40 more images kept would be 2 GB more


def _peak_kib(cmd: list[str]) -> int:
    proc = subprocess.run([sys.executable, "-c", PEAK_OF_CHILD, *cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported_256(tmp_path_factory, tiny_checkpoint) -> Path:
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

    out = tmp_path_factory.mktemp("exported256")
    return onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(MEMORY_SIZE, MEMORY_SIZE)).onnx_path


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units and semantics differ off Linux")
def test_quantize_peak_memory_does_not_grow_with_calibration_images(tmp_path, exported_256, tiny_data):
    calib = write_calibration_folder(tmp_path / "calib", 48, cfg=SynthConfig(size=96))
    peaks = {}
    for n in (8, 48):
        cmd = [sys.executable, "-c", "from aspp_deploy.cli import main; main()", "quantize", "--onnx", str(exported_256), "--precision", "int8",
               "--target", "trt", "--backend", "ort", "--method", "entropy", "--calib", str(calib),
               "--calib-size", str(n), "--data", str(tiny_data), "--budget-images", "0", "--eval-images", "1",
               "--no-cache", "--out", str(tmp_path / f"q{n}.onnx")]
        peaks[n] = _peak_kib(cmd)
    growth_mib = (peaks[48] - peaks[8]) / 1024
    # Keeping every image's intermediates (ORT by itself) would add about 2000 MiB here.
    assert growth_mib < 150, f"peak RSS grew by {growth_mib:.0f} MiB from 8 to 48 images ({peaks})"


AUTOCAST_STATS = """
import sys
from collections import OrderedDict
import numpy as np, onnx
from modelopt.onnx.autocast.referencerunner import ReferenceRunner
from aspp_deploy.precision import _modelopt_worker as w

model, folder = onnx.load(sys.argv[1]), sys.argv[2]
whole = ReferenceRunner(model, ["cpu"]).run(folder)  # ModelOpt's own: every batch in memory
w._stream_autocast_reference()
streamed = ReferenceRunner(model, ["cpu"]).run(folder)
assert ReferenceRunner.run._aspp_streaming
assert list(whole) == list(streamed), "tensor names or order differ"
for k in whole:
    a, b = whole[k], streamed[k]
    assert (a.absmax, a.min_val, a.max_val, tuple(a.shape)) == (b.absmax, b.min_val, b.max_val, tuple(b.shape)), k
print(len(whole))
"""


@pytest.mark.slow
def test_autocast_reference_statistics_streamed_are_modelopts_own(exported, calib_dir, tmp_path):
    """The FP16 worker reduces AutoCast's reference run batch by batch: same statistics as
    ModelOpt's all-batches-in-memory run (in a child process: ModelOpt patches ONNX Runtime)."""
    from aspp_deploy.precision.modelopt_backend import modelopt_available

    if not modelopt_available():
        pytest.skip("nvidia-modelopt (the quant extra) is not installed")
    calib = CalibrationData(calibration_files(calib_dir, 3), Preprocess(EXPORT_SIZE, EXPORT_SIZE))
    folder = tmp_path / "batches"
    folder.mkdir()
    for i, batch in enumerate(calib):
        np.savez(folder / f"batch{i:04d}.npz", **batch)
    proc = subprocess.run([sys.executable, "-c", AUTOCAST_STATS, str(exported), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 20
