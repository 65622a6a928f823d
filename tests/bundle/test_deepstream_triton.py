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
from aspp_deploy.runtime.preprocess import Preprocess
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
    if precision == "int8":
        # the Q/DQ model must not be built by nvinfer (it would fall back to FP16): no onnx-file, only the
        # engine build.sh makes; the config says so and which ONNX that engine comes from
        assert "onnx-file" not in props and "int8-calib-file" not in props
        text = config.read_text()
        assert "Trying FP16 mode" in text and "build.sh" in text
        onnx_file = (out / _info(out)["deepstream"]["configs"]["int8"]["onnx"]).resolve()
        assert f"--onnx {onnx_file.relative_to(out.resolve())}" in text
    else:
        onnx_file = (config.parent / props["onnx-file"]).resolve()  # nvinfer resolves paths from the config's folder
    assert onnx_file.is_file() and onnx_file.parent == (out / "models").resolve()
    graph = onnx.load(str(onnx_file))
    assert [o.name for o in graph.graph.output] == [props["output-blob-names"]]
    assert (config.parent / props["model-engine-file"]).resolve().parent == (out / "engines").resolve()


def test_int8_config_that_lets_nvinfer_build_is_caught():
    entry = {"preprocess": Preprocess().to_dict(), "classes": ["a", "b"],
             "inputs": [{"name": "input", "shape": [1, 3, 64, 64]}]}
    text = nvinfer_config(entry, "int8", "../models/m.int8-trt.deepstream.onnx", "../engines/e.engine")
    assert check_nvinfer_config(text) == [] and "onnx-file" not in text.split("[property]")[1]
    with_onnx = text.replace("model-engine-file=", "onnx-file=../models/m.onnx\nmodel-engine-file=")
    assert any("Trying FP16 mode" in p for p in check_nvinfer_config(with_onnx))
    # the legacy calibrated path (FP32 ONNX + a calibration cache) is one nvinfer builds right: onnx-file stays
    calibrated = nvinfer_config(entry, "int8", "../models/m.onnx", "../engines/e.engine", int8_calib_file="c.calib")
    assert check_nvinfer_config(calibrated) == [] and "onnx-file=../models/m.onnx" in calibrated
    fp16 = nvinfer_config(entry, "fp16", "../models/m.fp16.onnx", "../engines/f.engine")
    assert check_nvinfer_config(fp16) == [] and "onnx-file=" in fp16
    assert "missing key 'onnx-file'" in check_nvinfer_config(fp16.replace("onnx-file=", "# onnx-file="))


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


def test_bundle_service_model_runs_the_plan_through_triton(made_bundle):
    """The segmentation service in the bundle's repository calls the plan model (Triton's own schema)."""
    from google.protobuf import text_format

    pb = _model_config()
    folder = made_bundle.out / "triton" / "model_repository" / "aspp"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 8
    assert [(t.name, pb.DataType.Name(t.data_type), t.optional) for t in config.input] == [
        ("IMAGE", "TYPE_STRING", True), ("RAW", "TYPE_UINT8", True)]
    assert [(t.name, list(t.dims)) for t in config.output] == [("MASK", [-1, -1])]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["EXECUTOR"] == "triton" and params["TARGET_MODEL"] == "aspp_trt"
    assert config.HasField("dynamic_batching")
    service = json.loads((folder / "1" / "service.json").read_text())
    entry = _entry(made_bundle.out, "model.onnx")
    assert service["input"] == entry["inputs"][0]["name"] and service["output"] == entry["outputs"][0]["name"]
    assert service["manifest"]["preprocess"] == entry["preprocess"]
    assert not (folder / "1" / "model.onnx").exists()  # the network is the plan model's, not the service's


def test_tritons_schema_rejects_a_wrong_field():
    from google.protobuf import text_format

    pb = _model_config()
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 0\n', pb.ModelConfig())


def _nhwc_model(path: Path) -> None:
    """A tiny NHWC model: Transpose -> 1x1 Conv (3 -> 2 classes)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0, -2.0, 0.5], [-0.3, 0.8, 1.1]], np.float32).reshape(2, 3, 1, 1), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["nchw", "w"], ["logits"])], "nhwc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 12, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 8, 12])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("policy", ["letterbox", "stretch"])
def test_nvinfer_config_expresses_the_spec_nhwc_bgr_scale(tmp_path, policy):
    """A model fed NHWC, BGR, 0..255 means (scale 1): nvinfer's own keys reproduce the toolkit's input."""
    from aspp_deploy.bundle.deepstream import deepstream_onnx

    pre = Preprocess(8, 12, mean=(103.5, 116.3, 123.7), std=(57.4, 57.1, 58.4), scale=1.0, layout="NHWC",
                     channel_order="BGR", policy=policy)
    entry = {"preprocess": pre.to_dict(), "classes": ["a", "b"],
             "inputs": [{"name": "input", "shape": [1, 8, 12, 3]}]}
    text = nvinfer_config(entry, "fp16", "m.onnx", "m.engine")
    assert check_nvinfer_config(text) == []
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    props = dict(parser["property"])
    assert props["model-color-format"] == "1" and props["network-input-order"] == "1"
    assert float(props["net-scale-factor"]) == 1.0 and props["infer-dims"] == "3;8;12"
    assert (props["maintain-aspect-ratio"], props.get("symmetric-padding")) == \
        (("1", "1") if policy == "letterbox" else ("0", None))
    src, ds_path = tmp_path / "m.onnx", tmp_path / "m.ds.onnx"
    _nhwc_model(src)
    deepstream_onnx(src, ds_path, list(pre.std), layout="NHWC")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 20, 3), dtype=np.uint8))
    bgr = np.asarray(pre.resize_image(image), np.float32)[..., ::-1]  # what nvinfer sees (BGR, resized)
    offsets = np.array([float(v) for v in props["offsets"].split(";")], np.float32)
    nvinfer_input = (np.float32(props["net-scale-factor"]) * (bgr - offsets))[None]
    logits = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": pre(image)[None]})[0]
    probs = ort.InferenceSession(str(ds_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ascontiguousarray(nvinfer_input)})[0]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.abs(probs - expected).max() < 1e-5


def test_nvinfer_config_says_it_cannot_centre_crop():
    pre = Preprocess(8, 8, policy="center_crop")
    entry = {"preprocess": pre.to_dict(), "classes": ["a", "b"], "inputs": [{"name": "input", "shape": [1, 3, 8, 8]}]}
    assert "CAVEAT: nvinfer cannot resize-then-centre-crop" in nvinfer_config(entry, "fp16", "m.onnx", "m.engine")
