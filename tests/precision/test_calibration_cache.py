"""Calibration data shape and the calibration cache (keyed by model, data and settings)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.export.manifest import embed, read_embedded, read_sidecar, update_sidecar
from aspp_deploy.io import sha256_file
from aspp_deploy.precision.cache import CacheKey, CalibrationCache
from aspp_deploy.runtime.calibration import CalibrationData, calibration_files, ort_reader
from aspp_deploy.precision.modelopt_backend import activation_scales, modelopt_available
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32


def test_calibration_data_is_an_iterable_of_named_nchw_batches(calib_dir):
    files = calibration_files(calib_dir, 6)
    data = CalibrationData(files, Preprocess(40, 48), "input", batch_size=2)
    batches = list(data)
    assert len(batches) == len(data) == 3
    assert all(set(b) == {"input"} and b["input"].shape == (2, 3, 40, 48) and b["input"].dtype == np.float32
               for b in batches)
    assert np.array_equal(list(data)[1]["input"], batches[1]["input"])  # iterating again starts over
    reader = ort_reader(data)
    got = [reader.get_next() for _ in range(4)]
    assert got[3] is None and np.array_equal(got[0]["input"], batches[0]["input"])


def test_images_of_any_size_are_resized_by_the_manifest_preprocessing(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(17, 90), (300, 200), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    pre = Preprocess(32, 32)
    data = CalibrationData(calibration_files(folder, 0), pre).load()
    assert data.array.shape == (3, 3, 32, 32)
    with Image.open(folder / "im1.png") as im:
        assert np.array_equal(data.array[1], pre(im))


def test_cache_key_changes_with_model_data_and_each_setting():
    base = CacheKey("m" * 64, "d" * 64, {"method": "entropy", "calib": 8})
    assert base.digest == CacheKey("m" * 64, "d" * 64, {"calib": 8, "method": "entropy"}).digest
    others = [CacheKey("n" * 64, "d" * 64, base.settings), CacheKey("m" * 64, "e" * 64, base.settings),
              CacheKey("m" * 64, "d" * 64, {"method": "minmax", "calib": 8}),
              CacheKey("m" * 64, "d" * 64, {"method": "entropy", "calib": 9})]
    assert len({base.digest, *(k.digest for k in others)}) == 5


def test_a_payload_without_its_key_record_is_not_a_hit(tmp_path):
    cache = CalibrationCache(tmp_path)
    key = CacheKey("a", "b", {"x": 1}, "out.onnx")
    first = cache.lookup(key, ".ort.json")
    first.payload.write_text("{}")
    assert not cache.lookup(key, ".ort.json").hit  # written but never committed (e.g. a crash)
    assert not first.payload.exists()  # and removed: no tool may read it on a miss
    first.payload.write_text("{}")
    cache.commit(first)
    assert cache.lookup(key, ".ort.json").hit
    assert not CalibrationCache(None).lookup(key, ".ort.json").hit


@pytest.mark.parametrize("damage", ["garbage", "swapped", "key record not an object"])
def test_a_payload_that_does_not_match_its_key_is_discarded_not_used(tmp_path, damage):
    cache = CalibrationCache(tmp_path)
    key = CacheKey("a", "b", {"x": 1}, "out.onnx")
    other = CacheKey("c", "d", {"x": 2}, "other.onnx")
    for k, text in ((key, '{"ranges": 1}'), (other, '{"ranges": 2}')):
        made = cache.lookup(k, ".ort.json")
        made.payload.write_text(text)
        cache.commit(made)
    payload = cache.lookup(key, ".ort.json").payload
    record = payload.with_name(f"{key.digest}.key.json")
    if damage == "garbage":
        payload.write_bytes(b"\x00 not json")
    elif damage == "swapped":
        payload.write_text('{"ranges": 2}')
    else:
        record.write_text("[1, 2]")
    again = cache.lookup(key, ".ort.json")
    assert not again.hit
    assert not payload.exists() and not record.exists()
    assert cache.lookup(other, ".ort.json").hit  # the other entry is untouched


def _run(model, calib, data, **kw):
    opts = QuantizeOptions("int8", kw.pop("target", "cpu"), calib, data=data, budget_images=0,
                           eval_images=1, **kw)
    r = quantized_onnx_from_fp32(model, opts)
    return r.entry["quantization"]["calibration"]["cache"], onnx.load(str(r.onnx_path))


def _changed_weights(src, dst):
    model = onnx.load(str(src))
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.5
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    embed(model, read_embedded(model))
    onnx.save(model, str(dst))
    # a model changed on purpose comes with its manifest entry (a file that no longer matches its
    # entry's sha256 is refused as damaged or swapped)
    entry = read_sidecar(dst.parent).get(dst.name)
    if entry is not None:
        update_sidecar(dst.parent, dst.name, {**entry, "onnx_sha256": sha256_file(dst)})


def test_cache_is_reused_only_for_the_same_model_data_and_settings(fp32_model, calib_dir, tiny_data, tmp_path):
    first, q1 = _run(fp32_model, calib_dir, tiny_data)
    assert not first["hit"] and first["reason"] == "no cache yet"
    again, q2 = _run(fp32_model, calib_dir, tiny_data)
    assert again["hit"] and again["key"] == first["key"]
    assert activation_scales(q1) == activation_scales(q2)  # the cached ranges are the calibrated ones

    changed_setting, _ = _run(fp32_model, calib_dir, tiny_data, method="entropy")
    assert not changed_setting["hit"] and "settings (method)" in changed_setting["reason"]

    other_calib = tmp_path / "calib2"
    shutil.copytree(calib_dir, other_calib)
    victim = sorted(other_calib.iterdir())[0]
    with Image.open(victim) as im:
        Image.fromarray(255 - np.asarray(im)).save(victim, quality=95)
    changed_data, q3 = _run(fp32_model, other_calib, tiny_data)
    assert not changed_data["hit"] and "calibration images" in changed_data["reason"]

    _changed_weights(fp32_model, fp32_model)
    changed_model, _ = _run(fp32_model, calib_dir, tiny_data)
    assert not changed_model["hit"] and "model" in changed_model["reason"]
    keys = {first["key"], changed_setting["key"], changed_data["key"], changed_model["key"]}
    assert len(keys) == 4


@pytest.mark.parametrize("backend", ["ort", pytest.param("modelopt", marks=pytest.mark.skipif(
    not modelopt_available(), reason="nvidia-modelopt (the quant extra) is not installed"))])
def test_trt_cache_hit_reproduces_the_calibrated_scales(fp32_model, calib_dir, tiny_data, backend):
    first, q1 = _run(fp32_model, calib_dir, tiny_data, target="trt", backend=backend, method="minmax")
    again, q2 = _run(fp32_model, calib_dir, tiny_data, target="trt", backend=backend, method="minmax")
    assert not first["hit"] and again["hit"]
    s1, s2 = activation_scales(q1), activation_scales(q2)
    assert s1 and s1.keys() == s2.keys()
    assert all(np.isclose(s1[k], s2[k], rtol=1e-6) for k in s1)
