"""A Jetson bundle of a fused-I/O model: DeepStream runs it unfused (nvinfer feeds float tensors and
reads scores; its config says so), the Triton configs declare uint8 pixels in and uint8 class ids
out, and the README and manifest describe the pixels."""

from __future__ import annotations

import configparser
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.bundle.deepstream import check_nvinfer_config
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.serve.triton_config import config_pbtxt
from tests.bundle.conftest import run_cli
from tests.conftest import copy_model

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def fused_bundle(tmp_path_factory, fused_exported, tiny_data, calib_images):
    root = tmp_path_factory.mktemp("fused-bundle")
    src = root / "artifacts"
    copy_model(fused_exported, src)
    out = root / "jetson"
    result = run_cli("bundle", "--onnx", src / "model.onnx", "--calib", calib_images, "--data", tiny_data,
                     "--backend", "ort", "--precision", "fp16", "--out", out)
    assert result.exit_code == 0, result.output
    return SimpleNamespace(out=out, src=src)


def test_deepstream_runs_the_fused_model_unfused_and_says_why(fused_bundle):
    out = fused_bundle.out
    info = json.loads((out / "bundle.json").read_text())
    assert info["model"]["inputs"][0]["dtype"] == "uint8" and info["model"]["preprocess"]["fused_io"]
    config = out / info["deepstream"]["configs"]["fp16"]["config"]
    text = config.read_text()
    assert check_nvinfer_config(text) == []
    assert "model.fp16.onnx has fused I/O" in text and "nvdspreprocess tensor-data-type=1" in text
    props = configparser.ConfigParser(interpolation=None)
    props.read_string(text)
    p = props["property"]
    assert p["infer-dims"] == "3;64;64" and "network-input-order" not in p and p["network-type"] == "2"
    ds_entry = json.loads((out / "models" / "manifest.json").read_text())["artifacts"]["model.fp16.deepstream.onnx"]
    # FP16 keeps its input FP32 through a Cast named after the fused head: the unfused input gets a plain name
    assert ds_entry["inputs"] == [{"name": "normalised_input", "dtype": "float32", "shape": [1, 3, 64, 64]}]
    assert "fused_io" not in ds_entry["preprocess"] and not ds_entry["outputs_class_ids"]
    assert ds_entry["unfused_from"] == "model.fp16.onnx"
    # nvinfer's input from 8-bit pixels with the config's values -> the DeepStream ONNX's argmax is the fused
    # FP32 model's class ids on those very pixels
    pre = Preprocess.from_dict(info["model"]["preprocess"])
    image = Image.open(sorted((out / "selftest").glob("*.jpg"))[0]).convert("RGB")
    pixels = pre(image)
    scale = float(p["net-scale-factor"])
    offsets = np.array([float(v) for v in p["offsets"].split(";")], np.float32)
    nvinfer_input = (np.float32(scale) * (pixels.astype(np.float32) - offsets)).transpose(2, 0, 1)[None]
    ds = ort.InferenceSession(str(out / "models" / "model.fp16.deepstream.onnx"), providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(str(out / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = ds.run(None, {"normalised_input": nvinfer_input})[0]
    ids = fused.run(None, {"pixels": pixels[None]})[0]
    assert probs.shape == (1, len(info["model"]["classes"]), 64, 64) and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert (probs.argmax(1) == ids).mean() > 0.999  # FP16 against FP32


def test_triton_configs_declare_uint8_pixels_and_class_ids(fused_bundle):
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ships Triton's model_config.proto")
    repo = fused_bundle.out / "triton" / "model_repository"
    for model in ("aspp_trt", "aspp_onnx"):
        text = (repo / model / "config.pbtxt").read_text()
        assert "name: \"pixels\"" in text and "data_type: TYPE_UINT8\n    dims: [ 1, 64, 64, 3 ]" in text
        assert "name: \"class_ids\"" in text and "dims: [ 1, 64, 64 ]" in text
        assert "TYPE_FP32" not in text
    entry = json.loads((fused_bundle.src / "manifest.json").read_text())["artifacts"]["model.onnx"]
    entry = {**entry, "inputs": [{**entry["inputs"][0], "shape": ["batch", 64, 64, 3]}],
             "outputs": [{**entry["outputs"][0], "shape": ["batch", 64, 64]}]}
    dynamic = config_pbtxt("net", entry, "onnxruntime", dynamic_batch=True, warmup=True)
    assert "dims: [ -1, 64, 64, 3 ]" in dynamic and "dims: [ -1, 64, 64 ]" in dynamic
    assert dynamic.count("TYPE_UINT8") == 3  # input, output, and the warm-up's random pixels
    readme = (fused_bundle.out / "README.md").read_text()
    assert "uint8 RGB pixels (fused I/O)" in readme and "lays them out NCHW itself" in readme
