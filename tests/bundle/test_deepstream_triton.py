"""The generated DeepStream and Triton configs, checked against the manifest, nvinfer's documented keys,
ONNX Runtime (the DeepStream ONNX) and Triton's own model-config protobuf schema."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.bundle.deepstream import NVINFER_PROPERTY_KEYS, check_nvinfer_config, nvinfer_config
from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.errors import InputError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _info(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def _entry(bundle: Path, name: str = "model.onnx") -> dict:
    return json.loads((bundle / "models" / "manifest.json").read_text())["artifacts"][name]


@pytest.mark.parametrize("precision, mode", [("fp16", "2"), ("int8", "1")])
def test_nvinfer_config_uses_documented_keys_and_the_manifest(made_bundle, precision, mode):
    out = made_bundle.out
    config = out / f"deepstream/config_infer_primary_aspp_{precision}.txt"
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(config)
    assert parser.sections() == ["property"]
    props = dict(parser["property"])
    assert set(props) <= NVINFER_PROPERTY_KEYS, set(props) - NVINFER_PROPERTY_KEYS
    assert check_nvinfer_config(config.read_text()) == []
    entry = _entry(out)
    pre = entry["preprocess"]
    offsets = [float(v) for v in props["offsets"].split(";")]
    assert np.allclose(offsets, [255 * m for m in pre["mean"]], rtol=0, atol=1e-9)
    assert float(props["net-scale-factor"]) == pytest.approx(1 / 255, abs=1e-15)
    assert props["infer-dims"] == f"3;{pre['height']};{pre['width']}"
    assert int(props["num-detected-classes"]) == len(entry["classes"])
    assert props["network-type"] == "2" and props["network-mode"] == mode and props["model-color-format"] == "0"
    assert props["batch-size"] == str(entry["inputs"][0]["shape"][0]) and props["maintain-aspect-ratio"] == "0"
    onnx_file = (config.parent / props["onnx-file"]).resolve()  # nvinfer resolves paths from the config's folder
    assert onnx_file.is_file() and onnx_file.parent == (out / "models").resolve()
    graph = onnx.load(str(onnx_file))
    assert [o.name for o in graph.graph.output] == [props["output-blob-names"]]
    assert (config.parent / props["model-engine-file"]).resolve().parent == (out / "engines").resolve()


def test_an_undocumented_key_is_caught():
    text = "[property]\ngpu-id=0\nnet-scale=0.5\n"
    problems = check_nvinfer_config(text)
    assert "unknown nvinfer key 'net-scale'" in problems and "missing key 'offsets'" in problems


def test_nvinfer_config_refuses_a_dynamic_input():
    entry = {"preprocess": Preprocess().to_dict(), "classes": ["a", "b"],
             "inputs": [{"name": "input", "shape": ["batch", 3, 512, 512]}]}
    with pytest.raises(InputError, match="static"):
        nvinfer_config(entry, "fp16", "m.onnx", "m.engine")


@pytest.mark.parametrize("source, variant, tol", [("model.fp16.onnx", "model.fp16.deepstream.onnx", 2e-3),
                                                   ("model.int8-trt.onnx", "model.int8-trt.deepstream.onnx", 1e-4)])
def test_deepstream_onnx_on_nvinfer_inputs_matches_the_model(made_bundle, source, variant, tol):
    """Feed the DeepStream ONNX what nvinfer computes from 8-bit pixels with the config's values, and the
    model the toolkit's preprocessing: softmax(model) must equal the DeepStream output."""
    out = made_bundle.out
    props = configparser.ConfigParser(interpolation=None)
    props.read(out / f"deepstream/config_infer_primary_aspp_{'fp16' if 'fp16' in source else 'int8'}.txt")
    scale = float(props["property"]["net-scale-factor"])
    offsets = np.array([float(v) for v in props["property"]["offsets"].split(";")], np.float32).reshape(3, 1, 1)
    pre = Preprocess.from_dict(_entry(out)["preprocess"])
    image = Image.open(sorted((out / "selftest").glob("*.jpg"))[0]).convert("RGB")
    pixels = np.asarray(pre.resize_image(image), np.float32).transpose(2, 0, 1)
    nvinfer_input = (np.float32(scale) * (pixels - offsets))[None]
    model = ort.InferenceSession(str(out / "models" / source), providers=["CPUExecutionProvider"])
    ds = ort.InferenceSession(str(out / "models" / variant), providers=["CPUExecutionProvider"])
    logits = model.run(None, {"input": pre(image)[None]})[0]
    probs = ds.run(None, {"input": nvinfer_input})[0]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert probs.shape == logits.shape and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert np.abs(probs - expected).max() < tol
    assert (probs.argmax(1) == logits.argmax(1)).mean() > 0.999


# --- Triton ------------------------------------------------------------------------------------

def _model_config():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) ships Triton's model_config.proto")
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


@pytest.mark.parametrize("model, platform, backend, source", [
    ("aspp_trt", "tensorrt_plan", "", "model.fp16.onnx"),
    ("aspp_onnx", "", "onnxruntime", "model.onnx"),
])
def test_triton_config_parses_with_tritons_schema(made_bundle, model, platform, backend, source):
    from google.protobuf import text_format

    pb = _model_config()
    folder = made_bundle.out / "triton" / "model_repository" / model
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.name == model and config.platform == platform and config.backend == backend
    assert config.max_batch_size == 0 and (folder / "1").is_dir()
    entry = _entry(made_bundle.out, source)
    for tensors, declared in ((config.input, entry["inputs"]), (config.output, entry["outputs"])):
        assert [t.name for t in tensors] == [d["name"] for d in declared]
        assert [list(t.dims) for t in tensors] == [d["shape"] for d in declared]
        assert all(pb.DataType.Name(t.data_type) == "TYPE_FP32" for t in tensors)
    info = _info(made_bundle.out)["triton"]
    placed = info["plan_to"] if platform else info["onnx_to"]
    assert placed == f"triton/model_repository/{model}/1/{config.default_model_filename}"


def test_tritons_schema_rejects_a_wrong_field():
    from google.protobuf import text_format

    pb = _model_config()
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 0\n', pb.ModelConfig())
