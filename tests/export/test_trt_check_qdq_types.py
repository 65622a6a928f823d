"""`check` looks at the element type of Q/DQ pairs: TensorRT quantizes to int8 (UINT8 exists only
as network I/O), so a uint8 Q/DQ model is an error on every TensorRT version."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt

runner = CliRunner()


def qdq(zp_dtype, *, weight: bool = False, zero_point: bool = True, dq_zero_point: bool = True) -> onnx.ModelProto:
    """x -> Q -> DQ -> y (activation), or a uint8/int8 weight initializer -> DQ -> Add (weight)."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    if zero_point:
        inits.append(numpy_helper.from_array(np.array(0, zp_dtype), "z"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    if weight:
        inits.append(numpy_helper.from_array(np.ones((1, 3, 4, 4), zp_dtype), "w"))
        nodes = [helper.make_node("DequantizeLinear", ["w", "s"] + (["z"] if dq_zero_point else []), ["wf"], name="dq_w"),
                 helper.make_node("Add", ["x", "wf"], ["y"], name="add")]
    else:
        zq = ["z"] if zero_point else []
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"] + zq, ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s"] + (zq if dq_zero_point else []), ["y"], name="dq")]
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def type_errors(report):
    return [f for f in report.findings if f.severity == "error" and "quantized type" in f.message]


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_int8_qdq_passes_every_version(version):
    rep = check_for_trt(qdq(np.int8), version)
    assert rep.ok and not rep.findings


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_uint8_qdq_is_an_error_on_every_version(version):
    rep = check_for_trt(qdq(np.uint8), version)
    assert not rep.ok
    errs = type_errors(rep)
    assert {f.node for f in errs} == {"q", "dq"} and all("uint8" in f.message for f in errs)


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_uint8_weight_dequantize_without_zero_point_is_an_error(version):
    # the quantized type comes from the data itself when there is no zero point
    rep = check_for_trt(qdq(np.uint8, weight=True, dq_zero_point=False), version)
    assert [f.node for f in type_errors(rep)] == ["dq_w"]
    assert check_for_trt(qdq(np.int8, weight=True, dq_zero_point=False), version).ok


def test_dequantize_follows_the_type_of_its_quantize():
    # DQ without its own zero point takes the uint8 type the Q produced
    rep = check_for_trt(qdq(np.uint8, dq_zero_point=False), "10.x")
    assert {f.node for f in type_errors(rep)} == {"q", "dq"}


def test_quantize_without_zero_point_warns_default_uint8():
    rep = check_for_trt(qdq(np.int8, zero_point=False), "11")
    assert rep.ok
    assert any(f.severity == "warning" and f.node == "q" and "uint8" in f.message for f in rep.findings)


def test_check_cli_fails_on_uint8_qdq(tmp_path):
    path = tmp_path / "u8.onnx"
    onnx.save(qdq(np.uint8), str(path))
    r = runner.invoke(app, ["check", str(path)])
    assert r.exit_code == 1 and "uint8" in r.output
    good = tmp_path / "i8.onnx"
    onnx.save(qdq(np.int8), str(good))
    assert runner.invoke(app, ["check", str(good)]).exit_code == 0
