"""A malformed ``gpu`` / ``compute_capability`` / ``tensorrt_version`` in an engine manifest is
refused with one InputError line, never a TypeError/ValueError traceback."""

import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.trt.runtime import check_engine_manifest

GOOD_GPU = {"name": "Orin", "compute_capability": [8, 7]}


def manifest(**over):
    m = {"tensorrt_version": "10.3.0.30", "gpu": dict(GOOD_GPU)}
    m.update(over)
    return m


@pytest.mark.parametrize("gpu", ["Orin", 87, 8.7, True, ["Orin", [8, 7]], [8, 7]])
def test_gpu_not_an_object(gpu):
    with pytest.raises(InputError, match="gpu is .* not an object") as err:
        check_engine_manifest(manifest(gpu=gpu), "10.3.0.30", "Orin", (8, 7))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cc", ["8.7", "87", 87, 8.7, [8], [8, 7, 0], ["8", "7"], [8.0, 7.0], [8, -1],
                                [True, False], {"major": 8, "minor": 7}, [[8], [7]], [None, None]])
def test_compute_capability_malformed(cc):
    with pytest.raises(InputError, match="compute_capability is .* not \\[major, minor\\]") as err:
        check_engine_manifest(manifest(gpu={"name": "Orin", "compute_capability": cc}), "10.3.0.30", "Orin", (8, 7))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", [42, ["Orin"], {"n": "Orin"}])
def test_gpu_name_malformed(name):
    with pytest.raises(InputError, match="gpu name is"):
        check_engine_manifest(manifest(gpu={"name": name, "compute_capability": [8, 7]}), "10.3.0.30", "Orin", (8, 7))


def test_missing_gpu_or_fields_refused_where_needed():
    for m in (manifest(gpu=None), {"tensorrt_version": "10.3.0.30"}):
        with pytest.raises(InputError, match="records no gpu"):
            check_engine_manifest(m, "10.3.0.30", "Orin", (8, 7))
    with pytest.raises(InputError, match="compute_capability is null"):
        check_engine_manifest(manifest(gpu={"name": "Orin"}), "10.3.0.30", "Orin", (8, 7))
    with pytest.raises(InputError, match="gpu name is null"):
        check_engine_manifest(manifest(gpu={"compute_capability": [8, 7]}), "10.3.0.30", "Orin", (8, 7))


def test_hardware_compatible_engine_does_not_need_the_gpu_but_still_refuses_garbage():
    hc = {"tensorrt_version": "10.3.0.26", "hardware_compatibility_level": "AMPERE_PLUS"}
    check_engine_manifest(hc, "10.3.0.26", "NVIDIA H100", (9, 0))
    check_engine_manifest(dict(hc, gpu={"name": "NVIDIA A100"}), "10.3.0.26", "NVIDIA H100", (9, 0))
    with pytest.raises(InputError, match="compute_capability"):
        check_engine_manifest(dict(hc, gpu={"name": "A100", "compute_capability": "sm_80"}),
                              "10.3.0.26", "NVIDIA H100", (9, 0))
    with pytest.raises(InputError, match="gpu is"):
        check_engine_manifest(dict(hc, gpu="A100"), "10.3.0.26", "NVIDIA H100", (9, 0))


@pytest.mark.parametrize("version", [10.3, ["10", "3"], {"v": 1}, "latest", "v10.3"])
def test_tensorrt_version_malformed(version):
    with pytest.raises(InputError, match="tensorrt_version .* is not a version"):
        check_engine_manifest(manifest(tensorrt_version=version), "10.3.0.30", "Orin", (8, 7))


def test_well_formed_manifest_still_accepted_and_mismatch_still_refused():
    check_engine_manifest(manifest(), "10.3.0.30", " orin ", (8, 7))
    check_engine_manifest(manifest(gpu={"name": "Orin", "compute_capability": (8, 7)}), "10.3.0.30", "Orin", [8, 7])
    with pytest.raises(InputError, match="built for Orin \\(sm_87\\)"):
        check_engine_manifest(manifest(), "10.3.0.30", "Orin", (8, 6))
