"""FP16 and INT8 (ONNX Runtime) of a fused-I/O model: uint8 pixels in and uint8 class ids out are kept,
the fused nodes (the pixel normalisation, the argmax) stay in float, calibration is fed pixels, and
the accuracy is measured on masks, each model fed its own kind of input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from aspp_deploy.export.fused_io import fused_node_names
from aspp_deploy.precision.accuracy import compare_on_val
from aspp_deploy.precision.modelopt_backend import modelopt_available
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
from aspp_deploy.runtime.calibration import CalibrationData, calibration_files
from aspp_deploy.runtime.preprocess import Preprocess
from tests.conftest import copy_model

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


@pytest.fixture
def fused_model(tmp_path, fused_exported) -> Path:
    return copy_model(fused_exported, tmp_path / "model")


def _entry(onnx_path: Path) -> dict:
    return json.loads((onnx_path.parent / "manifest.json").read_text())["artifacts"][onnx_path.name]


def _io(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]


def _ids(path: Path, pixels: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: pixels})[0]


def test_calibration_feeds_a_fused_model_its_pixels(fused_model, calib_dir):
    pre = Preprocess.from_dict(_entry(fused_model)["preprocess"])
    data = CalibrationData(calibration_files(calib_dir, 2), pre, "pixels", 1).load()
    batch = next(iter(data))["pixels"]
    assert batch.dtype == np.uint8 and batch.shape == (1, 64, 64, 3)


MODELOPT = pytest.mark.skipif(not modelopt_available(), reason="nvidia-modelopt (the quant extra) is not installed")


@pytest.mark.parametrize("precision, target, backend", [("fp16", "trt", "ort"), ("int8", "cpu", "ort"),
                                                        pytest.param("int8", "trt", "modelopt", marks=MODELOPT),
                                                        pytest.param("fp16", "trt", "modelopt", marks=MODELOPT)])
def test_reduced_precision_keeps_uint8_io_and_the_fused_nodes_in_float(fused_model, calib_dir, tiny_data,
                                                                        precision, target, backend):
    opts = QuantizeOptions(precision, target, calib_dir, calib_size=4, method="minmax" if precision == "int8" else None,
                           data=tiny_data, budget_images=2 if target == "cpu" else 0, backend=backend)
    r = quantized_onnx_from_fp32(fused_model, opts)
    model = onnx.load(str(r.onnx_path))
    assert _io(model) == [TensorProto.UINT8, TensorProto.UINT8]
    assert r.entry["preprocess"]["fused_io"] is True and r.entry["outputs_class_ids"]
    fused = set(fused_node_names(model))
    assert {"fused_io/in/to_float", "fused_io/in/std", "fused_io/out/argmax"} <= fused
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in (n for n in model.graph.node if n.name in fused):
        # no fused node reads a quantized tensor, and the pixel normalisation and argmax compute in FP32
        assert all(producer[i].op_type != "DequantizeLinear" for i in node.input if i in producer), node.name
        constants = [t for t in model.graph.initializer if t.name in node.input]
        assert all(t.data_type == TensorProto.FLOAT for t in constants), node.name
    argmax = next(n for n in model.graph.node if n.name == "fused_io/out/argmax")
    scores = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in scores.graph.value_info}
    assert types.get(argmax.input[0]) == TensorProto.FLOAT  # the argmax reads FP32 scores
    if precision == "int8":
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    if target == "trt":  # the uint8 I/O passes the TensorRT pre-flight
        assert {"10.3", "11"} <= set(r.entry["trt_versions"]), r.entry["trt_check"]
    acc = r.entry["accuracy"]
    assert acc["max_abs_logit_diff"] is None  # class ids: compared as masks
    assert acc["pixel_agreement"] > 0.97 and acc["num_images"] == 4
    pixels = Preprocess(64, 64).fused().random_input(1, seed=5)
    out = _ids(r.onnx_path, pixels)
    assert out.dtype == np.uint8 and out.shape == (1, 64, 64)
    assert (out == _ids(fused_model, pixels)).mean() > 0.95


def test_accuracy_feeds_each_model_its_own_input_kind(fused_exported, exported, tiny_data):
    """The unfused FP32 model against its fused twin: floats to one, pixels to the other, the same masks."""
    entry = _entry(exported)
    pre, classes = Preprocess.from_dict(entry["preprocess"]), entry["classes"]
    both = compare_on_val(exported, fused_exported, tiny_data, pre, classes)
    assert both.pixel_agreement == 1.0 and both.max_abs_logit_diff is None and both.miou == both.miou_fp32
    back = compare_on_val(fused_exported, exported, tiny_data, pre.fused(), classes)
    assert back.pixel_agreement == 1.0 and back.miou == back.miou_fp32
