"""cuda-python built for a newer CUDA major than the driver (e.g. 13.x on a CUDA 12 driver) fails
cudaGetDeviceCount like a missing driver: the error says which it is. No GPU needed (a fake
cudart), and the extras pin cuda-python by CUDA major."""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from aspp_deploy.errors import MissingDependencyError
from aspp_deploy.runtime.trt import cuda as cuda_layer
from aspp_deploy.runtime.trt.cuda import no_device_message

ROOT = Path(__file__).resolve().parents[3]


class FakeCudart:
    """The few cuda-python runtime calls the device probe makes; err 35 = insufficient driver."""

    def __init__(self, count_err=35, driver=12040, runtime=13000, driver_err=0):
        self.count_err, self.driver, self.runtime, self.driver_err = count_err, driver, runtime, driver_err

    def cudaGetDeviceCount(self):
        return (self.count_err, 0)

    def cudaGetErrorName(self, err):
        return (0, b"cudaErrorInsufficientDriver" if err == 35 else b"cudaErrorNoDevice")

    def cudaDriverGetVersion(self):
        return (self.driver_err, self.driver)

    def cudaRuntimeGetVersion(self):
        return (0, self.runtime)


def probe(fake, monkeypatch):
    with pytest.raises(MissingDependencyError) as err:
        cuda_layer._CudaPython(fake)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_bindings_newer_than_driver_is_named(monkeypatch):
    text = probe(FakeCudart(driver=12040, runtime=13000), monkeypatch)
    assert "cuda-python is built for CUDA 13 (13.0)" in text
    assert "driver supports CUDA up to 12.4" in text
    assert "pip install 'cuda-python>=12,<13'" in text and "tensorrt-cu12" in text
    assert "no NVIDIA driver" not in text


def test_matching_major_without_a_gpu_says_driver_is_there(monkeypatch):
    text = probe(FakeCudart(count_err=100, driver=12040, runtime=12060), monkeypatch)
    assert "cudaErrorNoDevice" in text and "driver supports CUDA 12.4" in text and "no GPU" in text
    assert "cuda-python is built for" not in text


def test_no_driver_at_all(monkeypatch):
    monkeypatch.setattr(cuda_layer, "_driver_cuda_version", lambda cudart: None)
    text = probe(FakeCudart(driver=0, driver_err=35), monkeypatch)
    assert "no NVIDIA driver or GPU visible" in text


@pytest.mark.parametrize("driver, bindings, mismatch", [
    (12080, 13000, True), (13000, 13020, False), (12020, 12060, False), (13000, 12060, False),
    (None, 13000, False), (12040, None, False)])
def test_message_rule(driver, bindings, mismatch):
    text = no_device_message("cudaErrorInsufficientDriver", driver, bindings)
    assert ("cuda-python is built for CUDA" in text) == mismatch


def test_extras_pin_cuda_python_by_cuda_major():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for major in (12, 13):
        reqs = {r.name: r for r in map(Requirement, extras[f"tensorrt-cu{major}"])}
        assert f"tensorrt-cu{major}" in reqs
        spec = reqs["cuda-python"].specifier
        assert spec.contains(f"{major}.9") and not spec.contains(f"{major + 1}.0") and not spec.contains(f"{major - 1}.9")
    # the plain `tensorrt` extra no longer leaves cuda-python's major open
    for req in map(Requirement, extras["tensorrt"]):
        if req.name == "cuda-python":
            assert not req.specifier.contains("13.0") or not req.specifier.contains("12.0")
        else:
            assert req.name == "aspp-deploy" and req.extras <= {"tensorrt-cu12", "tensorrt-cu13"}
