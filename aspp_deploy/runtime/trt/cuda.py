"""A tiny CUDA layer for TensorRT, backed by cuda-python or pycuda (chosen at run time).

Only what the runner and the calibrator need: device queries, device/pinned memory, async copies,
streams, events and CUDA-graph capture. ``get_cuda()`` raises ``MissingDependencyError`` with one
line saying what is missing when there is no CUDA package, driver or device.
"""

from __future__ import annotations

import atexit
import importlib.util
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from aspp_deploy.errors import AsppDeployError, InputError, MissingDependencyError

BACKENDS = ("auto", "cuda-python", "pycuda")
INSTALL_HINT = ("pip install cuda-python (or pycuda); on Jetson, JetPack ships CUDA: "
                "pip install the cuda-python release matching its CUDA version")


class CudaError(AsppDeployError):
    """A CUDA call failed at run time."""


@dataclass
class DeviceBuffer:
    """Device memory; the owner keeps this object alive as long as TensorRT may use ``ptr``."""

    ptr: int
    nbytes: int
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def free(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


@dataclass(frozen=True)
class Stream:
    handle: int  # the cudaStream_t as an int: what execute_async_v3 takes
    native: Any  # the backend's own stream object


class CudaApi:
    """The operations TensorRT code needs; one subclass per CUDA Python package."""

    name = "none"
    supports_graphs = False

    def enter_thread(self) -> None:
        """Make the device's context current on the calling thread (the runtime API does it by itself)."""

    def leave_thread(self) -> None:
        """Undo ``enter_thread`` before the calling thread ends."""

    def device_count(self) -> int:
        raise NotImplementedError

    def device_name(self) -> str:
        raise NotImplementedError

    def compute_capability(self) -> tuple[int, int]:
        raise NotImplementedError

    def malloc(self, nbytes: int) -> DeviceBuffer:
        raise NotImplementedError

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        raise NotImplementedError

    def memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, stream: Stream) -> None:
        raise NotImplementedError

    def memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, stream: Stream) -> None:
        raise NotImplementedError

    def stream_create(self) -> Stream:
        raise NotImplementedError

    def stream_sync(self, stream: Stream) -> None:
        raise NotImplementedError

    def stream_destroy(self, stream: Stream) -> None:
        """Default: the backend destroys a stream when its object is collected."""

    def event_create(self) -> Any:
        raise NotImplementedError

    def event_record(self, event: Any, stream: Stream) -> None:
        raise NotImplementedError

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def event_destroy(self, event: Any) -> None:
        """Default: the backend destroys an event when its object is collected."""

    # CUDA graphs (what trtexec --useCudaGraph does): capture on a stream, instantiate, launch.
    def begin_capture(self, stream: Stream) -> None:
        raise CudaError(f"CUDA graphs are not available through {self.name}: pip install cuda-python")

    def end_capture(self, stream: Stream) -> Any:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def graph_instantiate(self, graph: Any) -> Any:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def graph_launch(self, graph_exec: Any, stream: Stream) -> None:
        raise CudaError(f"CUDA graphs are not available through {self.name}")

    def graph_destroy(self, graph: Any = None, graph_exec: Any = None) -> None:
        """Release a captured graph and/or its executable instance."""

    def clear_last_error(self) -> None:
        """Reset the sticky 'last error' after a failed capture."""


def _contiguous(host_array: np.ndarray) -> np.ndarray:
    if not host_array.flags["C_CONTIGUOUS"]:
        raise InputError("host array for a CUDA copy must be C-contiguous (use np.ascontiguousarray)")
    return host_array


class _PinnedHost:
    """Page-locked host memory exposed to NumPy; freed when the last array view is gone."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, release: Callable[[], None]) -> None:
        self.__array_interface__ = {"shape": shape, "typestr": dtype.str, "data": (ptr, False), "version": 3}
        self._release = release

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn CUDA down already
            pass


def _cuda_version_text(version: int) -> str:
    """CUDA's integer version (1000 * major + 10 * minor, e.g. 12040) as "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def no_device_message(why: str, driver_version: int | None, bindings_version: int | None) -> str:
    """The one line for a failed ``cudaGetDeviceCount``. A cuda-python built for a newer CUDA major
    than the driver supports (e.g. cuda-python 13.x on a CUDA 12 driver: ``pip install
    cuda-python>=12`` resolves to 13.x) fails exactly like a missing driver; say which it is.
    Versions are CUDA integers (12040 = 12.4); None or 0 driver version: no driver answered."""
    if driver_version and bindings_version and bindings_version // 1000 > driver_version // 1000:
        d_major, b_major = driver_version // 1000, bindings_version // 1000
        return (f"no CUDA device: cudaGetDeviceCount says {why}: cuda-python is built for CUDA {b_major} "
                f"({_cuda_version_text(bindings_version)}) but the NVIDIA driver supports CUDA up to "
                f"{_cuda_version_text(driver_version)}; install the cuda-python matching the driver: "
                f"pip install 'cuda-python>={d_major},<{d_major + 1}' (or the aspp-deploy[tensorrt-cu{d_major}] "
                "extra), or update the driver")
    if driver_version:
        return (f"no CUDA device: cudaGetDeviceCount says {why} (the NVIDIA driver supports CUDA "
                f"{_cuda_version_text(driver_version)}, but no GPU is visible to this process)")
    return (f"no CUDA device: cudaGetDeviceCount says {why} "
            "(no NVIDIA driver or GPU visible to this process)")


def _driver_cuda_version(cudart: Any) -> int | None:
    """The CUDA version the installed driver supports, from cuda-python, else libcuda itself."""
    try:
        err, version = cudart.cudaDriverGetVersion()
        if int(err) == 0 and int(version):
            return int(version)
    except Exception:  # noqa: BLE001 - best effort, only used to word an error
        pass
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        out = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(out)) == 0 and out.value:
            return int(out.value)
    except Exception:  # noqa: BLE001 - no driver library (or not Linux)
        pass
    return None


def _bindings_cuda_version(cudart: Any) -> int | None:
    """The CUDA version cuda-python was built for (its runtime version), else its package major."""
    try:
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0 and int(version):
            return int(version)
    except Exception:  # noqa: BLE001
        pass
    try:
        from importlib import metadata

        for dist in ("cuda-bindings", "cuda-python"):
            try:
                major = int(metadata.version(dist).split(".")[0])
                return major * 1000
            except (metadata.PackageNotFoundError, ValueError):
                continue
    except Exception:  # noqa: BLE001
        pass
    return None


class _CudaPython(CudaApi):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: Any) -> None:
        self.rt = cudart
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or not count:
            why = self._err_name(err) if int(err) != 0 else "0 devices"
            raise MissingDependencyError(no_device_message(why, _driver_cuda_version(cudart),
                                                           _bindings_cuda_version(cudart)))
        self.count = int(count)
        self._ok(cudart.cudaSetDevice(0), "cudaSetDevice(0)")

    def _err_name(self, err: Any) -> str:
        name = self.rt.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)

    def _ok(self, result: Any, what: str) -> Any:
        """Check a cuda-python ``(err, *values)`` tuple; return the value(s)."""
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            raise CudaError(f"{what} failed: {self._err_name(err)}")
        return values[0] if len(values) == 1 else (values or None)

    def device_count(self) -> int:
        return self.count

    def device_name(self) -> str:
        name = self._ok(self.rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties").name
        return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()

    def compute_capability(self) -> tuple[int, int]:
        attr = self.rt.cudaDeviceAttr
        major = self._ok(self.rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, 0), "cc major")
        minor = self._ok(self.rt.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, 0), "cc minor")
        return int(major), int(minor)

    def malloc(self, nbytes: int) -> DeviceBuffer:
        ptr = int(self._ok(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))
        return DeviceBuffer(ptr, int(nbytes), lambda: self._ok(self.rt.cudaFree(ptr), "cudaFree"))

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        ptr = int(self._ok(self.rt.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes})"))
        return np.asarray(_PinnedHost(ptr, tuple(int(s) for s in shape), dt, lambda: self.rt.cudaFreeHost(ptr)))

    def memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, stream: Stream) -> None:
        host = _contiguous(host_array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(dst_ptr, host.ctypes.data, host.nbytes, kind, stream.native), "copy H2D")

    def memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, stream: Stream) -> None:
        host = _contiguous(host_array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(host.ctypes.data, src_ptr, host.nbytes, kind, stream.native), "copy D2H")

    def stream_create(self) -> Stream:
        s = self._ok(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate")
        return Stream(int(s), s)

    def stream_sync(self, stream: Stream) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream.native), "cudaStreamSynchronize")

    def stream_destroy(self, stream: Stream) -> None:
        self._ok(self.rt.cudaStreamDestroy(stream.native), "cudaStreamDestroy")

    def event_create(self) -> Any:
        return self._ok(self.rt.cudaEventCreate(), "cudaEventCreate")

    def event_record(self, event: Any, stream: Stream) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream.native), "cudaEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self._ok(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def begin_capture(self, stream: Stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._ok(self.rt.cudaStreamBeginCapture(stream.native, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: Stream) -> Any:
        return self._ok(self.rt.cudaStreamEndCapture(stream.native), "cudaStreamEndCapture")

    def graph_instantiate(self, graph: Any) -> Any:
        return self._ok(self.rt.cudaGraphInstantiateWithFlags(graph, 0), "cudaGraphInstantiate")

    def graph_launch(self, graph_exec: Any, stream: Stream) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph_exec, stream.native), "cudaGraphLaunch")

    def graph_destroy(self, graph: Any = None, graph_exec: Any = None) -> None:
        if graph_exec is not None:
            self._ok(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        if graph is not None:
            self._ok(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def clear_last_error(self) -> None:
        self.rt.cudaGetLastError()


class _PyCuda(CudaApi):
    """pycuda on the device's primary context (the one TensorRT's runtime API uses)."""

    name = "pycuda"  # no CUDA graphs through pycuda here: the runner falls back to plain launches

    def __init__(self, drv: Any) -> None:
        self.drv = drv
        try:
            drv.init()
            count = drv.Device.count()
        except drv.Error as exc:
            raise MissingDependencyError(f"no CUDA device: pycuda says {exc}") from None
        if count == 0:
            raise MissingDependencyError("no CUDA device: pycuda sees 0 devices")
        self.count = int(count)
        self.device = drv.Device(0)
        self.context = self.device.retain_primary_context()
        self.context.push()
        atexit.register(self.context.pop)
        self._home = threading.get_ident()

    def enter_thread(self) -> None:
        """pycuda's contexts belong to a thread: push the primary context on another thread (the stream
        pipeline infers on its own thread) before it touches device memory."""
        if threading.get_ident() != self._home:
            self.context.push()

    def leave_thread(self) -> None:
        if threading.get_ident() != self._home:
            self.drv.Context.pop()

    def device_count(self) -> int:
        return self.count

    def device_name(self) -> str:
        return str(self.device.name()).strip()

    def compute_capability(self) -> tuple[int, int]:
        major, minor = self.device.compute_capability()
        return int(major), int(minor)

    def malloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self.drv.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(int(alloc), int(nbytes), alloc.free)

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(tuple(int(s) for s in shape), np.dtype(dtype))

    def memcpy_htod_async(self, dst_ptr: int, host_array: np.ndarray, stream: Stream) -> None:
        self.drv.memcpy_htod_async(dst_ptr, _contiguous(host_array), stream.native)

    def memcpy_dtoh_async(self, host_array: np.ndarray, src_ptr: int, stream: Stream) -> None:
        self.drv.memcpy_dtoh_async(_contiguous(host_array), src_ptr, stream.native)

    def stream_create(self) -> Stream:
        s = self.drv.Stream()
        return Stream(int(s.handle), s)

    def stream_sync(self, stream: Stream) -> None:
        stream.native.synchronize()

    def event_create(self) -> Any:
        return self.drv.Event()

    def event_record(self, event: Any, stream: Stream) -> None:
        event.record(stream.native)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        return float(end.time_since(start))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def _broken(package: str, exc: ImportError) -> MissingDependencyError:
    return MissingDependencyError(f"{package} is installed but cannot load (no NVIDIA driver?): {exc}")


def _load(backend: str) -> Any | None:
    """The backend's module, or None when its package is not installed."""
    if backend == "pycuda":
        if not _installed("pycuda"):
            return None
        try:
            import pycuda.driver as drv  # pyright: ignore[reportMissingImports]
        except ImportError as exc:
            raise _broken("pycuda", exc) from None
        return drv
    if _installed("cuda.bindings"):  # cuda-python 12.6+
        try:
            from cuda.bindings import runtime as cudart  # pyright: ignore[reportMissingImports]
        except ImportError as exc:
            raise _broken("cuda-python", exc) from None
        return cudart
    if _installed("cuda.cudart"):  # older cuda-python releases
        try:
            import cuda.cudart as cudart  # pyright: ignore[reportMissingImports]
        except ImportError as exc:
            raise _broken("cuda-python", exc) from None
        return cudart
    return None


_CACHE: dict[str, CudaApi] = {}


def get_cuda(preferred: str = "auto") -> CudaApi:
    """The CUDA layer: ``"auto"`` tries cuda-python, then pycuda."""
    if preferred not in BACKENDS:
        raise InputError(f"unknown CUDA backend {preferred!r}: choose one of {', '.join(BACKENDS)}")
    if preferred in _CACHE:
        return _CACHE[preferred]
    for backend in (("cuda-python", "pycuda") if preferred == "auto" else (preferred,)):
        module = _load(backend)
        if module is not None:
            api = _CudaPython(module) if backend == "cuda-python" else _PyCuda(module)
            _CACHE[preferred] = api
            return api
    if preferred == "auto":
        raise MissingDependencyError(f"no CUDA Python package (cuda-python or pycuda): {INSTALL_HINT}")
    raise MissingDependencyError(f"{preferred} is not installed: pip install {preferred} "
                                 "(on Jetson, JetPack ships CUDA; pycuda builds from source there)")
