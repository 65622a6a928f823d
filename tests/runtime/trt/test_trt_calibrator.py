"""Calibration batches and the calibration cache key, on real arrays and real files (no TensorRT needed)."""

import json

import numpy as np
import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.trt.calibrator import (CalibrationBatches, CalibrationCache, calibration_cache_key, check_batch,
                                        data_key_from_batches)


def batches(n=3, shape=(2, 3, 8, 8), seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(shape, dtype=np.float32)} for _ in range(n)]


def test_batches_are_checked_and_counted():
    data = CalibrationBatches(batches(3))
    assert data.spec == {"input": (2, 3, 8, 8)} and data.batch_size == 2
    seen = []
    while (batch := data.next()) is not None:
        seen.append(batch["input"].shape)
    assert seen == [(2, 3, 8, 8)] * 3 and data.count == 3
    assert data.next() is None


def test_a_bad_batch_is_reported_when_reached():
    items = batches(3)
    items[2] = {"input": np.zeros((1, 3, 8, 8), np.float32)}  # short last batch
    data = CalibrationBatches(iter(items))
    assert data.next() is not None and data.next() is not None
    with pytest.raises(InputError, match=r"batch 2 input 'input' has shape \(1, 3, 8, 8\), batch 0 had \(2, 3, 8, 8\)"):
        data.next()


@pytest.mark.parametrize("batch, message", [
    ({"input": np.zeros((2, 3, 8, 8), np.float64)}, "is float64; calibration data must be float32"),
    ({"input": np.zeros((2, 3, 8, 16), np.float32)[..., ::2]}, "not C-contiguous"),
    ({"input": [[1.0]]}, "is a list, not a NumPy array"),
    ({}, "non-empty dict"),
    (np.zeros((2, 3), np.float32), "non-empty dict"),
    ({"a": np.zeros((2, 3), np.float32), "b": np.zeros((3, 3), np.float32)}, "different batch sizes"),
    ({"input": np.zeros((), np.float32)}, "needs a batch dimension"),
])
def test_check_batch_refusals(batch, message):
    with pytest.raises(InputError, match=message):
        check_batch(batch, 0)


def test_check_batch_against_names():
    with pytest.raises(InputError, match=r"has inputs \['image'\], batch 0 had \['input'\]"):
        check_batch({"image": np.zeros((2, 3), np.float32)}, 1, {"input": (2, 3)})


def test_empty_calibration_data():
    with pytest.raises(InputError, match="calibration data is empty"):
        CalibrationBatches([])


def test_data_key_follows_the_data():
    assert data_key_from_batches(batches(seed=1)) == data_key_from_batches(batches(seed=1))
    changed = batches(seed=1)
    changed[1]["input"][0, 0, 0, 0] += 1.0
    assert data_key_from_batches(changed) != data_key_from_batches(batches(seed=1))
    assert data_key_from_batches(batches(n=2, seed=1)) != data_key_from_batches(batches(n=3, seed=1))


MODEL = "a" * 64
SETTINGS = {"algorithm": "entropy", "preprocess": {"height": 512, "width": 512}}


def test_cache_round_trip(tmp_path):
    key = calibration_cache_key(MODEL, data_key_from_batches(batches()), SETTINGS)
    cache = CalibrationCache(tmp_path / "m.calib", key, "10.3.0.26")
    assert cache.read() is None and "no calibration cache" in cache.reason
    cache.write(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    sidecar = json.loads((tmp_path / "m.calib.json").read_text())
    assert sidecar["key"] == key and sidecar["trt_version"] == "10.3.0.26"
    again = CalibrationCache(tmp_path / "m.calib", key)
    assert again.read() == b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.calib", "m.calib.json"]  # no temp files left


@pytest.mark.parametrize("change", ["model", "data", "setting"])
def test_cache_is_not_reused_when_anything_changed(tmp_path, change):
    data_key = data_key_from_batches(batches())
    CalibrationCache(tmp_path / "m.calib", calibration_cache_key(MODEL, data_key, SETTINGS)).write(b"cache")
    model, settings = MODEL, dict(SETTINGS)
    if change == "model":
        model = "b" * 64
    elif change == "data":
        other = batches()
        other[0]["input"][0, 0, 0, 0] = 42.0
        data_key = data_key_from_batches(other)
    else:
        settings["algorithm"] = "minmax"
    cache = CalibrationCache(tmp_path / "m.calib", calibration_cache_key(model, data_key, settings))
    assert cache.read() is None
    assert "another model, calibration data or settings" in cache.reason


def test_cache_edited_behind_its_sidecar_is_not_reused(tmp_path):
    key = calibration_cache_key(MODEL, "data", SETTINGS)
    cache = CalibrationCache(tmp_path / "m.calib", key)
    cache.write(b"cache")
    (tmp_path / "m.calib").write_bytes(b"edited")
    assert cache.read() is None and "does not match its sidecar" in cache.reason
    (tmp_path / "m.calib.json").write_text("{not json")
    assert cache.read() is None and "unreadable sidecar" in cache.reason


def test_cache_key_is_order_independent_but_value_sensitive():
    a = calibration_cache_key(MODEL, "d", {"x": 1, "y": [1, 2]})
    assert a == calibration_cache_key(MODEL, "d", {"y": [1, 2], "x": 1})
    assert a != calibration_cache_key(MODEL, "d", {"x": 1, "y": [2, 1]})


def test_a_fused_models_uint8_pixels_calibrate_in_buffers_of_their_own_size(tmp_path):
    """A fused-I/O network takes uint8 pixels: they are accepted, a batch of another dtype is refused, and the
    device buffers the calibrator hands TensorRT hold uint8, not float32 (a recording stand-in for CUDA)."""
    from aspp_deploy.runtime.trt.calibrator import CalibrationFeeder

    rng = np.random.default_rng(0)
    pixels = [{"pixels": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)} for _ in range(2)]
    data = CalibrationBatches(pixels + [{"pixels": np.zeros((2, 8, 8, 3), np.float32)}])
    assert data.dtypes == {"pixels": np.dtype(np.uint8)}

    class RecordingCuda:
        def __init__(self):
            self.sizes = []

        def stream_create(self):
            return object()

        def malloc(self, nbytes):
            self.sizes.append(nbytes)
            return type("Buffer", (), {"ptr": len(self.sizes), "free": lambda self: None})()

    cuda = RecordingCuda()
    CalibrationFeeder(data, CalibrationCache(tmp_path / "c.calib", "k"), cuda)  # type: ignore[arg-type]
    assert cuda.sizes == [2 * 8 * 8 * 3]  # one byte per value
    assert data.next() is not None and data.next() is not None
    with pytest.raises(InputError, match="batch 2 input 'pixels' is float32, batch 0 was uint8"):
        data.next()
