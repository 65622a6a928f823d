"""Build plans per TensorRT version: the recipe for every precision/ONNX kind, and every refusal."""

import json

import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.trt.plan import BuildRequest, PlanError, feature_support, make_build_plan, parse_version

V85, V86, V103, V1013, V114 = (8, 5), (8, 6), (10, 3), (10, 13), (11, 4)
ALL = (V85, V86, V103, V1013, V114)

# (precision, onnx_kind, legacy_int8) -> expected (explicit_batch, strongly_typed, builder_flags, calibrator)
EXPECTED = {
    V85: {
        ("fp32", "fp32", False): (True, False, [], False),
        ("fp16", "fp32", False): (True, False, ["FP16"], False),
        ("fp16", "fp16", False): (True, False, ["FP16"], False),
        ("int8", "qdq", False): (True, False, ["INT8", "FP16"], False),
        ("int8", "fp32", True): (True, False, ["INT8", "FP16"], True),
    },
    V103: {
        ("fp32", "fp32", False): (False, True, [], False),
        ("fp16", "fp32", False): (False, False, ["FP16"], False),
        ("fp16", "fp16", False): (False, True, [], False),
        ("int8", "qdq", False): (False, True, [], False),
        ("int8", "fp32", True): (False, False, ["INT8", "FP16"], True),
    },
    V114: {
        ("fp32", "fp32", False): (False, True, [], False),
        ("fp16", "fp16", False): (False, True, [], False),
        ("int8", "qdq", False): (False, True, [], False),
    },
}
EXPECTED[V86] = EXPECTED[V85]
EXPECTED[V1013] = EXPECTED[V103]
VALID = [(v, combo) for v in ALL for combo in EXPECTED[v]]


@pytest.mark.parametrize("text, version", [("10.3.0.26", (10, 3)), ("8.5.2.2", (8, 5)), ("11.4.1", (11, 4)),
                                           ("8.6", (8, 6)), (" 10.13.0.35 ", (10, 13))])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_parse_version_rejects_garbage():
    with pytest.raises(InputError, match="not a TensorRT version"):
        parse_version("ten")


@pytest.mark.parametrize("version, combo", VALID, ids=[f"{v[0]}.{v[1]}-{c[0]}-{c[1]}{'-legacy' * c[2]}"
                                                       for v, c in VALID])
def test_plan_per_version(version, combo):
    precision, kind, legacy = combo
    plan = make_build_plan(version, BuildRequest(precision=precision, onnx_kind=kind, legacy_int8=legacy))
    assert (plan.explicit_batch_flag, plan.strongly_typed, plan.builder_flags, plan.use_calibrator) == \
        EXPECTED[version][combo]
    assert not (plan.strongly_typed and {"FP16", "INT8"} & set(plan.builder_flags)), "never mix strong typing and flags"
    assert plan.network_flags == (["EXPLICIT_BATCH"] if version[0] == 8 else ["STRONGLY_TYPED"] * plan.strongly_typed)
    json.dumps(plan.to_dict())  # goes into the manifest


@pytest.mark.parametrize("version", [V103, V1013])
def test_10x_deprecated_paths_say_so(version):
    fp16 = make_build_plan(version, BuildRequest(precision="fp16", onnx_kind="fp32"))
    assert any("deprecated" in n and "quantize --precision fp16" in n for n in fp16.notes)
    legacy = make_build_plan(version, BuildRequest(precision="int8", onnx_kind="fp32", legacy_int8=True))
    assert any("deprecated since TensorRT 10.1" in n for n in legacy.notes)


def test_11x_refuses_legacy_int8_with_the_alternative():
    with pytest.raises(PlanError) as err:
        make_build_plan(V114, BuildRequest(precision="int8", onnx_kind="fp32", legacy_int8=True))
    assert str(err.value) == ("TensorRT 11 removed INT8 calibrators; quantize to a Q/DQ ONNX with "
                              "`aspp-deploy quantize --precision int8` and build that")


def test_11x_refuses_fp16_from_fp32_onnx():
    with pytest.raises(PlanError, match=r"no FP16 builder flag.*aspp-deploy quantize --precision fp16"):
        make_build_plan(V114, BuildRequest(precision="fp16", onnx_kind="fp32"))


@pytest.mark.parametrize("version", ALL)
def test_int8_from_fp32_needs_quantization(version):
    with pytest.raises(PlanError) as err:
        make_build_plan(version, BuildRequest(precision="int8", onnx_kind="fp32"))
    assert "aspp-deploy quantize --precision int8" in str(err.value)
    assert ("legacy_int8" in str(err.value)) == (version[0] < 11)


@pytest.mark.parametrize("precision, kind, legacy, message", [
    ("fp16", "qdq", False, "Q/DQ ONNX builds an INT8 engine"),
    ("fp32", "qdq", False, "Q/DQ ONNX builds an INT8 engine"),
    ("fp32", "fp16", False, "fp16 ONNX builds an FP16 engine"),
    ("int8", "fp16", False, "fp16 ONNX builds an FP16 engine"),
    ("fp16", "fp32", True, "only applies to precision int8"),
    ("int8", "qdq", True, "starts from the FP32 ONNX"),
    ("bf16", "fp32", False, "unknown precision"),
    ("fp32", "onnx", False, "unknown ONNX kind"),
])
@pytest.mark.parametrize("version", [V86, V103])
def test_combinations_that_never_exist(version, precision, kind, legacy, message):
    with pytest.raises(PlanError, match=message):
        make_build_plan(version, BuildRequest(precision=precision, onnx_kind=kind, legacy_int8=legacy))


@pytest.mark.parametrize("version", [V85, V86])
def test_strongly_typed_unavailable_on_8x(version):
    with pytest.raises(PlanError, match=r"no strongly typed networks \(10.0\+\)"):
        make_build_plan(version, BuildRequest(strongly_typed=True))


def test_strongly_typed_choices_on_10x_and_11x():
    with pytest.raises(PlanError, match="removed weak typing"):
        make_build_plan(V114, BuildRequest(strongly_typed=False))
    with pytest.raises(PlanError, match="gives an FP32 engine.*quantize --precision fp16"):
        make_build_plan(V103, BuildRequest(precision="fp16", onnx_kind="fp32", strongly_typed=True))
    with pytest.raises(PlanError, match="calibration needs a weakly typed network"):
        make_build_plan(V1013, BuildRequest(precision="int8", legacy_int8=True, strongly_typed=True))
    weak_qdq = make_build_plan(V103, BuildRequest(precision="int8", onnx_kind="qdq", strongly_typed=False))
    assert (weak_qdq.strongly_typed, weak_qdq.builder_flags) == (False, ["INT8", "FP16"])


def test_builder_optimization_level_needs_8_6():
    with pytest.raises(PlanError, match="no builder optimization level"):
        make_build_plan(V85, BuildRequest(opt_level=3))
    assert make_build_plan(V86, BuildRequest(opt_level=5)).opt_level == 5
    with pytest.raises(PlanError, match="must be 0..5"):
        make_build_plan(V103, BuildRequest(opt_level=6))


def test_compatibility_modes_need_8_6():
    with pytest.raises(PlanError, match="version-compatible.*8.6"):
        make_build_plan(V85, BuildRequest(version_compatible=True))
    with pytest.raises(PlanError, match="hardware-compatible.*8.6"):
        make_build_plan(V85, BuildRequest(hardware_compat=True))
    plan = make_build_plan(V103, BuildRequest(version_compatible=True, hardware_compat=True))
    assert "VERSION_COMPATIBLE" in plan.builder_flags and plan.version_compatible
    assert plan.hardware_compatibility_level == "AMPERE_PLUS"


def test_dla_where_it_exists():
    plan = make_build_plan(V103, BuildRequest(precision="fp16", dla_core=1), dla_cores=2)
    assert (plan.strongly_typed, plan.builder_flags, plan.dla_core) == (False, ["FP16", "GPU_FALLBACK"], 1)
    plan = make_build_plan(V85, BuildRequest(precision="int8", legacy_int8=True, dla_core=0))
    assert plan.builder_flags == ["INT8", "FP16", "GPU_FALLBACK"] and plan.use_calibrator
    plan = make_build_plan(V114, BuildRequest(precision="fp16", onnx_kind="fp16", dla_core=0))
    assert (plan.strongly_typed, plan.builder_flags) == (True, ["GPU_FALLBACK"])
    assert any("11.4.1" in n for n in plan.notes)


@pytest.mark.parametrize("version, req, dla_cores, message", [
    (V1013, BuildRequest(precision="fp16", dla_core=0), None, "10.7 was the last 10.x release with DLA"),
    ((11, 1), BuildRequest(precision="fp16", onnx_kind="fp16", dla_core=0), None, "DLA from 11.4.1"),
    (V103, BuildRequest(precision="fp16", dla_core=0), 0, "this device has no DLA"),
    (V103, BuildRequest(precision="fp16", dla_core=2), 2, "DLA core 2 does not exist"),
    (V86, BuildRequest(precision="fp32", dla_core=0), None, "FP16 or INT8 only"),
    (V86, BuildRequest(precision="int8", onnx_kind="qdq", dla_core=0), None, "explicit quantization"),
    (V103, BuildRequest(precision="fp16", dla_core=0, hardware_compat=True), None, "cannot use the DLA"),
    (V114, BuildRequest(precision="int8", onnx_kind="qdq", dla_core=0), None, "INT8 on the DLA"),
    (V103, BuildRequest(precision="fp16", dla_core=0, strongly_typed=True), None, "weakly typed"),
    (V103, BuildRequest(precision="fp16", dla_core=-1), None, "0 or more"),
])
def test_dla_refusals(version, req, dla_cores, message):
    with pytest.raises(PlanError, match=message):
        make_build_plan(version, req, dla_cores=dla_cores)


@pytest.mark.parametrize("version", [(8, 4), (9, 3), (12, 0), (7, 1)])
def test_unsupported_versions(version):
    with pytest.raises(PlanError, match="not supported"):
        make_build_plan(version, BuildRequest())


def test_feature_support_by_version():
    f = {v: feature_support(v) for v in [(8, 5), (8, 6), (10, 0), (10, 1), (10, 7), (10, 8), (11, 4)]}
    assert [f[v]["builder_optimization_level"] for v in f] == [False, True, True, True, True, True, True]
    assert [f[v]["hardware_compatibility"] for v in f] == [False, True, True, True, True, True, True]
    assert [f[v]["version_compatible"] for v in f] == [False, True, True, True, True, True, True]
    assert [f[v]["create_execution_context_strategy"] for v in f] == [False, False, True, True, True, True, True]
    assert [f[v]["parser_error_node_name"] for v in f] == [False, False, True, True, True, True, True]
    assert [f[v]["device_memory_size_v2"] for v in f] == [False, False, False, True, True, True, True]
    assert [f[v]["explicit_batch_flag"] for v in f] == [True, True, False, False, False, False, False]
    assert [f[v]["int8_calibrator"] for v in f] == [True, True, True, True, True, True, False]
    assert [f[v]["dla"] for v in f] == [True, True, True, True, True, False, True]
