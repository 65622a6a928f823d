"""The pure parts of the build step: trtexec command lines, optimization profiles, layer precisions."""

import json
import shlex

import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.trt.build import artifact_metadata, resolve_profiles, summarize_layers, trtexec_command
from aspp_deploy.runtime.trt.plan import BuildRequest, make_build_plan

DYNAMIC = {"input": ((1, 3, 512, 512), (4, 3, 512, 512), (8, 3, 512, 512))}


def cmd(version, req, **kwargs):
    return trtexec_command(make_build_plan(version, req), "m.onnx", "m.engine", **kwargs)


def test_trtexec_8_5_fp16():
    assert cmd((8, 5), BuildRequest(precision="fp16"), workspace_mb=1024) == (
        "trtexec --onnx=m.onnx --saveEngine=m.engine --fp16 --memPoolSize=workspace:1024 "
        "--profilingVerbosity=detailed --buildOnly")


def test_trtexec_10_3_qdq_strongly_typed_dynamic():
    line = cmd((10, 3), BuildRequest(precision="int8", onnx_kind="qdq", opt_level=4), profiles=DYNAMIC,
               timing_cache="cache/m.timing")
    assert line == ("trtexec --onnx=m.onnx --saveEngine=m.engine --stronglyTyped "
                    "--minShapes=input:1x3x512x512 --optShapes=input:4x3x512x512 --maxShapes=input:8x3x512x512 "
                    "--builderOptimizationLevel=4 --timingCacheFile=cache/m.timing "
                    "--profilingVerbosity=detailed --skipInference")


def test_trtexec_11_has_no_precision_flags():
    line = cmd((11, 4), BuildRequest(precision="fp16", onnx_kind="fp16"))
    assert "--fp16" not in line and "--stronglyTyped" not in line and "--int8" not in line


def test_trtexec_legacy_int8_uses_the_calibration_cache():
    line = cmd((10, 3), BuildRequest(precision="int8", legacy_int8=True), calib_cache="m.calib")
    assert " --int8 --fp16 --calib=m.calib " in line and "--stronglyTyped" not in line


def test_trtexec_dla_and_compatibility_flags():
    line = cmd((8, 6), BuildRequest(precision="fp16", dla_core=1, version_compatible=True))
    assert "--useDLACore=1" in line and line.count("--allowGPUFallback") == 1 and "--versionCompatible" in line
    line = cmd((10, 3), BuildRequest(hardware_compat=True))
    assert "--hardwareCompatibilityLevel=ampere+" in line


def test_trtexec_quotes_paths():
    line = trtexec_command(make_build_plan((10, 3), BuildRequest()), "my models/m.onnx", "out/m.engine")
    assert shlex.split(line)[1] == "--onnx=my models/m.onnx"


def test_static_inputs_need_no_profile():
    assert resolve_profiles({"input": (1, 3, 64, 64)}) is None
    assert resolve_profiles({"input": (1, 3, 64, 64)}, opt_shapes={"input": (1, 3, 64, 64)}) is None


def test_dynamic_inputs_need_shapes():
    with pytest.raises(InputError, match=r"input 'input' has dynamic shape \?x3x\?x\?: give its min/opt/max"):
        resolve_profiles({"input": (-1, 3, -1, -1)})


def test_profile_from_shapes_and_defaults():
    profiles = resolve_profiles({"input": (-1, 3, 512, 512)}, min_shapes={"input": [1, 3, 512, 512]},
                                max_shapes={"input": [8, 3, 512, 512]})
    assert profiles == {"input": ((1, 3, 512, 512), (8, 3, 512, 512), (8, 3, 512, 512))}  # opt defaults to max
    only_opt = resolve_profiles({"input": (-1, 3, 64, 64)}, opt_shapes={"input": (2, 3, 64, 64)})
    assert only_opt == {"input": ((2, 3, 64, 64),) * 3}


@pytest.mark.parametrize("kwargs, message", [
    ({"min_shapes": {"input": (1, 3, 256, 512)}, "max_shapes": {"input": (8, 3, 512, 512)}}, "does not fit"),
    ({"min_shapes": {"input": (4, 3, 512, 512)}, "max_shapes": {"input": (2, 3, 512, 512)}}, "min <= opt <= max"),
    ({"opt_shapes": {"image": (1, 3, 512, 512)}}, r"shapes given for \['image'\]"),
    ({"opt_shapes": {"input": (1, 3, 512)}}, "does not fit"),
    ({"opt_shapes": {"input": (0, 3, 512, 512)}}, "does not fit"),
])
def test_profile_refusals(kwargs, message):
    with pytest.raises(InputError, match=message):
        resolve_profiles({"input": (-1, 3, 512, 512)}, **kwargs)


INSPECTOR_JSON = json.dumps({
    "Layers": [
        {"Name": "/conv/Conv + /relu/Relu", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "input", "Dimensions": [1, 3, 32, 32],
                     "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Name": "out", "Dimensions": [1, 4, 32, 32],
                      "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "reformat", "LayerType": "Reformat",
         "Inputs": [{"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}],
         "Outputs": [{"Format/Datatype": "Row major linear FP32 format (kLINEAR)"}]},
        {"Name": "quantized conv", "LayerType": "CaskConvolution",
         "Inputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "Outputs": [{"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}]},
    ],
    "Bindings": ["input", "out"]})


def test_layer_precisions_from_the_inspector():
    summary = summarize_layers(INSPECTOR_JSON)
    assert summary["count"] == 3
    assert summary["precisions"] == {"FP16": 1, "FP32": 1, "INT8": 1}
    assert summary["layers"][1] == {"name": "reformat", "type": "Reformat", "in": "FP16", "out": "FP32"}


def test_layer_names_only_inspector_output():
    summary = summarize_layers(json.dumps({"Layers": ["conv", "relu"], "Bindings": []}))
    assert summary["count"] == 2 and summary["precisions"] == {"unknown": 2}


def test_engine_manifest_carries_the_onnx_preprocessing(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from aspp_deploy.export.manifest import embed, read_onnx_manifest

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("input", "output")]
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", io[:1], io[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert artifact_metadata(path) == {}
    entry = {"preprocess": Preprocess(256, 320).to_dict(), "classes": ["background", "cat"],
             "palette": [[0, 0, 0], [128, 0, 0]], "opset": 17}
    embed(model, entry)
    onnx.save(model, str(path))
    assert artifact_metadata(path) == {}  # embedded only: the device runtime (no onnx package) reads manifest.json
    carried = artifact_metadata(path, read_onnx_manifest(path).typed)  # what the host's build passes
    assert carried == {k: entry[k] for k in ("preprocess", "classes", "palette")}
    assert Preprocess.from_dict(carried["preprocess"]) == Preprocess(256, 320)
