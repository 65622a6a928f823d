"""The CUDA layer without a GPU: clear errors, buffer ownership, pinned-memory lifetime."""

import ctypes
import importlib.util

import numpy as np
import pytest

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.trt import cuda as cuda_layer
from aspp_deploy.runtime.trt.cuda import DeviceBuffer, get_cuda


def installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


HAS_CUDA_PYTHON = installed("cuda.bindings") or installed("cuda.cudart")
HAS_PYCUDA = installed("pycuda")


@pytest.fixture(autouse=True)
def fresh_cache():
    cuda_layer._CACHE.clear()
    yield
    cuda_layer._CACHE.clear()


@pytest.mark.skipif(HAS_CUDA_PYTHON or HAS_PYCUDA, reason="a CUDA Python package is installed here")
def test_no_cuda_package_says_what_to_install():
    with pytest.raises(MissingDependencyError) as err:
        get_cuda()
    text = str(err.value)
    assert "\n" not in text
    assert "no CUDA Python package" in text and "pip install cuda-python" in text and "pycuda" in text
    assert "JetPack" in text


@pytest.mark.skipif(HAS_PYCUDA, reason="pycuda is installed here")
def test_asking_for_pycuda_without_it():
    with pytest.raises(MissingDependencyError, match="pycuda is not installed: pip install pycuda"):
        get_cuda("pycuda")


@pytest.mark.skipif(not HAS_CUDA_PYTHON, reason="cuda-python is not installed")
def test_cuda_python_without_a_device_says_so():
    try:
        api = get_cuda("cuda-python")
    except MissingDependencyError as exc:
        assert "no CUDA device" in str(exc) or "cannot load" in str(exc)
    else:
        pytest.skip(f"a CUDA device is present ({api.device_name()})")


def test_unknown_backend():
    with pytest.raises(InputError, match="unknown CUDA backend 'cupy'"):
        get_cuda("cupy")


def test_device_buffer_frees_once():
    calls = []
    buffer = DeviceBuffer(0x1000, 64, lambda: calls.append("free"))
    buffer.free()
    buffer.free()
    assert calls == ["free"]


def test_pinned_memory_lives_as_long_as_any_view():
    raw = ctypes.create_string_buffer(64)
    released = []
    array = np.asarray(cuda_layer._PinnedHost(ctypes.addressof(raw), (4, 4), np.dtype(np.float32),
                                              lambda: released.append(True)))
    array[:] = 1.5
    view = array[2:]
    del array
    assert released == [] and float(view.sum()) == 12.0
    del view
    assert released == [True]


def test_copies_refuse_non_contiguous_host_arrays():
    with pytest.raises(InputError, match="C-contiguous"):
        cuda_layer._contiguous(np.zeros((4, 4), np.float32)[:, ::2])
