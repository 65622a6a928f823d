"""FP16: mixed precision with FP32 I/O, opset 17, accuracy recorded."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto

from aspp_deploy.export.trt_check import check_for_trt
from aspp_deploy.precision.fp16 import onnxconverter_available
from aspp_deploy.precision.modelopt_backend import modelopt_available
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

BACKENDS = [
    pytest.param("modelopt", marks=pytest.mark.skipif(not modelopt_available(), reason="nvidia-modelopt not installed")),
    pytest.param("ort", marks=pytest.mark.skipif(not onnxconverter_available(), reason="onnxconverter-common not installed")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_is_mixed_precision_with_fp32_io(fp32_model, calib_dir, tiny_data, backend):
    r = quantized_onnx_from_fp32(fp32_model, QuantizeOptions("fp16", calib=calib_dir, data=tiny_data,
                                                             budget_images=2, backend=backend))
    assert r.onnx_path.name == "model.fp16.onnx"
    model = onnx.load(str(r.onnx_path))
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])
    assert model.opset_import[0].version == 17 and check_for_trt(model, "8.5").ok
    acc = r.entry["accuracy"]
    assert 0 < acc["max_abs_logit_diff"] < 0.05 and acc["pixel_agreement"] > 0.99
    assert r.entry["precision"] == "fp16" and r.entry["classes"] and r.entry["preprocess"]["height"] == 64


def test_fp16_of_an_fp16_model_is_refused(fp32_model, calib_dir, tiny_data):
    from aspp_deploy.errors import InputError

    if not (modelopt_available() or onnxconverter_available()):
        pytest.skip("no FP16 converter installed")
    r = quantized_onnx_from_fp32(fp32_model, QuantizeOptions("fp16", calib=calib_dir, data=tiny_data,
                                                             budget_images=0, eval_images=1))
    with pytest.raises(InputError, match="already reduced precision"):
        quantized_onnx_from_fp32(r.onnx_path, QuantizeOptions("fp16", calib=calib_dir, data=tiny_data))
