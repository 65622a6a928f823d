"""INT8: Q/DQ rules of the TensorRT-target model, the CPU recipe, the accuracy budget loop."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt
from aspp_deploy.precision.modelopt_backend import modelopt_available
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32
from tests.precision.conftest import labelled_by_model, outlier_model, random_images

TRT_BACKENDS = ["ort", pytest.param("modelopt", marks=pytest.mark.skipif(
    not modelopt_available(), reason="nvidia-modelopt (the quant extra) is not installed"))]


def _parts(model: onnx.ModelProto):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return inits, producer


@pytest.mark.parametrize("backend", TRT_BACKENDS)
def test_trt_target_follows_the_tensorrt_qdq_rules(fp32_model, calib_dir, tiny_data, backend):
    r = quantized_onnx_from_fp32(fp32_model, QuantizeOptions("int8", "trt", calib_dir, data=tiny_data,
                                                             budget_images=0, backend=backend))
    model = onnx.load(str(r.onnx_path))
    inits, producer = _parts(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq, "no Q/DQ nodes at all"
    for n in qdq:
        scale = inits[n.input[1]]
        assert scale.dtype == np.float32 and np.all(scale > 0), n.name
        zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros(1, np.int8)
        assert zp.dtype == np.int8 and not np.any(zp), f"{n.name}: zero point must be int8 0"
        if scale.size > 1:  # per-channel: only on convolution weights, along output channels
            assert n.op_type == "DequantizeLinear" and n.input[0] in inits, f"{n.name}: per-channel activation"
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            assert axis == 0 and scale.shape == (inits[n.input[0]].shape[0],)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        x, w = producer.get(conv.input[0]), producer.get(conv.input[1])
        assert x is not None and x.op_type == "DequantizeLinear", f"{conv.name}: input not quantized"
        assert w is not None and w.op_type == "DequantizeLinear", f"{conv.name}: weight not quantized"
        assert inits[w.input[0]].dtype == np.int8 and inits[w.input[1]].size == inits[w.input[0]].shape[0]
    for add in (n for n in model.graph.node if n.op_type == "Add"):
        kinds = sorted(producer[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], f"{add.name}: {kinds} (Conv+Add would not fuse)"
    assert model.opset_import[0].version == 17
    assert check_for_trt(model, "8.5").ok and check_for_trt(model, "10.3").ok
    assert set(r.entry["trt_versions"]) >= {"8.5", "8.6", "10.3", "11"}
    on_disk = json.loads((fp32_model.parent / "manifest.json").read_text())["artifacts"][r.onnx_path.name]
    assert on_disk["precision"] == "int8" and on_disk["target"] == "trt"
    assert on_disk["onnx_sha256"] and on_disk["quantization"]["backend"] == backend


def test_cpu_target_uses_uint8_activations_and_int8_per_channel_weights(fp32_model, calib_dir, tiny_data):
    r = quantized_onnx_from_fp32(fp32_model, QuantizeOptions("int8", "cpu", calib_dir, data=tiny_data,
                                                             budget_images=2))
    assert r.onnx_path.name == "model.int8-cpu.onnx"
    model = onnx.load(str(r.onnx_path))
    inits, _ = _parts(model)
    act = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].ndim == 4]
    assert act and all(inits[n.input[2]].dtype == np.uint8 for n in act)
    assert weights and all(inits[n.input[0]].dtype == np.int8 and inits[n.input[1]].size > 1 for n in weights)
    acc = r.entry["accuracy"]
    assert acc["num_images"] == 4 and 0.0 <= acc["pixel_agreement"] <= 1.0
    assert acc["delta_miou_points"] == pytest.approx(100 * (acc["miou"] - acc["miou_fp32"]))
    assert acc["max_abs_logit_diff"] > 0  # INT8 is not bit-exact: a zero would mean FP32 was measured
    calibration = r.entry["quantization"]["calibration"]
    choice = calibration["method_choice"]  # --target cpu measures the methods (auto) and keeps the best
    assert choice["requested"] == "auto" and calibration["method"] in {t["method"] for t in choice["tried"]}
    # the TensorRT pre-flight: a summary in the file (it listed every Q/DQ node on every version),
    # every finding in the sidecar beside it
    reports = [check_for_trt(model, v) for v in TRT_VERSIONS]
    assert len(json.dumps([rep.to_dict() for rep in reports])) > 20_000  # what the metadata held before
    assert sum(len(p.key) + len(p.value) for p in model.metadata_props) < 20_000
    sidecar = r.onnx_path.parent / r.entry["trt_check_findings"]["file"]
    assert sidecar.name == "model.int8-cpu.trt_check.json"
    assert json.loads(sidecar.read_text())["reports"] == [rep.to_dict() for rep in reports]
    assert r.entry["trt_check"] == {rep.trt_version: rep.summary() for rep in reports}


@pytest.mark.parametrize("target", ["cpu", "trt"])
def test_budget_loop_keeps_the_harmful_layers_and_meets_the_budget(tmp_path, target):
    model = outlier_model(tmp_path / "m" / "model.onnx")
    data = labelled_by_model(model, tmp_path / "data", 6, seed=1)
    calib = random_images(tmp_path / "cal", 8, seed=2)
    opts = QuantizeOptions("int8", target, calib, data=data, method="minmax", backend="ort",
                           max_miou_drop=5.0, budget_images=6)
    r = quantized_onnx_from_fp32(model, opts)
    budget = r.entry["quantization"]["budget"]
    assert budget["drop_all_reduced_points"] > 20, "the constructed case should need the budget"
    kept = [k["group"] for k in budget["kept_in_higher_precision"]]
    assert {"backbone.layer1.0", "head.classifier.4"} <= set(kept)
    assert "backbone.stem" not in kept  # the loop stops once the budget is met
    assert budget["met"] and budget["drop_points"] <= 5.0 < budget["drop_all_reduced_points"]
    assert {s["group"] for s in budget["sensitivity"]} == {"backbone.stem", "backbone.layer1.0", "head.classifier.4"}
    assert all(k["recovered_points"] > 0 for k in budget["kept_in_higher_precision"])
    # the written model really is the better one: measured again on the full split
    assert -r.entry["accuracy"]["delta_miou_points"] <= 5.0
    # and the kept layers really run on float inputs
    m = onnx.load(str(r.onnx_path))
    producer = {o: n for n in m.graph.node for o in n.output}
    head = next(n for n in m.graph.node if n.name == "/classifier/classifier.4/Conv")
    assert producer[head.input[0]].op_type != "DequantizeLinear"


def test_without_budget_loop_nothing_is_kept(tmp_path):
    model = outlier_model(tmp_path / "m" / "model.onnx")
    data = labelled_by_model(model, tmp_path / "data", 4, seed=1)
    calib = random_images(tmp_path / "cal", 4, seed=2)
    r = quantized_onnx_from_fp32(model, QuantizeOptions("int8", "cpu", calib, data=data, method="minmax",
                                                        budget_images=0))
    budget = r.entry["quantization"]["budget"]
    assert budget["kept_in_higher_precision"] == [] and budget["met"] is None
    assert -r.entry["accuracy"]["delta_miou_points"] > 20  # the damage the loop exists to repair
