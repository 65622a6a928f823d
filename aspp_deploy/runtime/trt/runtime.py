"""Run a TensorRT engine with NumPy in and out, checked against its manifest.

Embeddable in a Jetson application: this module imports only NumPy, the standard library,
``tensorrt`` (inside functions), ``aspp_deploy.runtime.trt.cuda``, ``aspp_deploy.errors`` and the portable
core's typed manifest (``aspp_deploy.runtime.manifest``) - never torch or onnx.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Tuple

import numpy as np

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.manifest import ENGINE_FORMAT, EngineManifest, engine_manifest_path
from aspp_deploy.runtime.trt.cuda import CudaError, DeviceBuffer, get_cuda

if TYPE_CHECKING:
    import tensorrt

TRT_INSTALL_HINT = "TensorRT is not installed: pip install tensorrt-cu12 (desktop) or use the JetPack python3-libnvinfer"
NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool"}  # trt.DataType member name -> NumPy dtype
VC_ACROSS_MAJORS = {(8, 10), (10, 11)}  # version-compatible engines also run one major version on
MANIFEST_FORMAT = ENGINE_FORMAT
Shape = Tuple[int, ...]  # typing.Tuple: the Jetson runtime also runs on Python 3.8 (JetPack 5)


def tensorrt_installed() -> bool:
    """True when a real TensorRT is importable (``tensorrt-stubs`` alone leaves an empty namespace package)."""
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None


def import_tensorrt():
    """The ``tensorrt`` module, or ``MissingDependencyError`` saying how to install it."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: the package is there but libnvinfer cannot load
        detail = "" if isinstance(exc, ModuleNotFoundError) else f" ({exc})"
        raise MissingDependencyError(TRT_INSTALL_HINT + detail) from None
    if not hasattr(trt, "Builder"):
        raise MissingDependencyError(TRT_INSTALL_HINT + " (only its type stubs were found)")
    return trt


def dims_to_tuple(dims: tensorrt.Dims) -> Shape:
    return tuple(int(dims[i]) for i in range(len(dims)))


def numpy_dtype(trt_dtype_name: str) -> np.dtype:
    """``"HALF"`` -> float16; InputError for types NumPy cannot hold (BF16, FP8, INT4)."""
    if trt_dtype_name not in NUMPY_DTYPES:
        raise InputError(f"engine tensor type {trt_dtype_name} has no NumPy equivalent")
    return np.dtype(NUMPY_DTYPES[trt_dtype_name])


def input_profile(engine: tensorrt.ICudaEngine, name: str) -> tuple[Shape, Shape, Shape]:
    """min/opt/max of an input in optimization profile 0 (its own shape three times when static)."""
    static = dims_to_tuple(engine.get_tensor_shape(name))
    if all(d >= 0 for d in static):
        return static, static, static
    lo, opt, hi = (dims_to_tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
    return lo, opt, hi


def manifest_path(engine_path: Path | str) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return engine_manifest_path(engine_path)


def read_engine_manifest(engine_path: Path | str, need_preprocess: bool = True) -> dict[str, Any]:
    """The manifest ``aspp-deploy build`` wrote beside an engine, verified (``EngineManifest.read``), as a record."""
    return EngineManifest.read(engine_path, need_preprocess).to_dict()


def _version3(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in str(text).split(".")[:3] if p.isdigit()] + [0, 0, 0]
    return parts[0], parts[1], parts[2]


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _manifest_gpu(manifest: Mapping[str, Any], required: bool) -> tuple[str, tuple[int, ...]]:
    """(name, compute capability) the engine manifest records; InputError when it is malformed
    (``gpu`` not an object, ``compute_capability`` not two non-negative integers) or, where the
    check needs it, missing."""
    rebuild = ": rebuild the engine with `aspp-deploy build`"
    gpu = manifest.get("gpu")
    if gpu is None:
        if required:
            raise InputError("the engine manifest records no gpu (name and compute_capability)" + rebuild)
        return "?", ()
    if not isinstance(gpu, Mapping):
        raise InputError(f"the engine manifest's gpu is {_short(gpu)}, not an object with name and "
                         "compute_capability" + rebuild)
    name, cc = gpu.get("name"), gpu.get("compute_capability")
    if (name is None and required) or (name is not None and not isinstance(name, str)):
        raise InputError(f"the engine manifest's gpu name is {_short(name)}, not a GPU name" + rebuild)
    if cc is None and not required:
        return str(name or "?"), ()
    if not isinstance(cc, (list, tuple)) or len(cc) != 2 or \
            not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in cc):
        raise InputError(f"the engine manifest's gpu compute_capability is {_short(cc)}, not [major, minor] "
                         "integers such as [8, 7]" + rebuild)
    return str(name or "?"), (int(cc[0]), int(cc[1]))


def check_engine_manifest(manifest: Mapping[str, Any], trt_version: str, gpu_name: str,
                          compute_capability: Sequence[int]) -> None:
    """InputError unless this TensorRT version and GPU may run the engine the manifest describes."""
    built = str(manifest.get("tensorrt_version") or "")
    if not built:
        raise InputError("the engine manifest has no tensorrt_version: build the engine with `aspp-deploy build`")
    if not isinstance(manifest.get("tensorrt_version"), str) or not built.split(".")[0].isdigit():
        raise InputError(f"the engine manifest's tensorrt_version {_short(manifest.get('tensorrt_version'))} is not "
                         "a version such as \"10.3.0.30\": rebuild the engine with `aspp-deploy build`")
    b, r = _version3(built), _version3(trt_version)
    bs, rs = ".".join(map(str, b)), ".".join(map(str, r))
    if manifest.get("version_compatible"):
        if r < b or not (r[0] == b[0] or (b[0], r[0]) in VC_ACROSS_MAJORS):
            raise InputError(f"the engine was built version-compatible with TensorRT {bs}, which TensorRT {rs} "
                             f"cannot run (it needs {b[0]}.x from {bs} on): rebuild it here with `aspp-deploy build`")
    elif b != r:
        raise InputError(f"the engine was built with TensorRT {bs} but this is TensorRT {rs}: engines are tied to "
                         "one TensorRT version, rebuild it here with `aspp-deploy build`")
    level = manifest.get("hardware_compatibility_level")
    b_name, b_cc = _manifest_gpu(manifest, required=level != "AMPERE_PLUS")
    cc = tuple(int(x) for x in compute_capability)
    if level == "AMPERE_PLUS":
        if cc < (8, 0):
            raise InputError(f"the engine is hardware-compatible with Ampere or newer GPUs; this {gpu_name} is "
                             f"sm_{''.join(map(str, cc))}: rebuild it on this device")
    elif b_cc != cc or " ".join(b_name.lower().split()) != " ".join(gpu_name.lower().split()):
        raise InputError(f"the engine was built for {b_name} (sm_{''.join(map(str, b_cc))}) but this GPU is "
                         f"{gpu_name} (sm_{''.join(map(str, cc))}): engines are tied to one GPU model, "
                         "rebuild it on this device with `aspp-deploy build`")


def check_input_shape(name: str, shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> None:
    """InputError unless ``lo <= shape <= hi`` dimension by dimension (the engine's profile)."""
    if len(shape) != len(lo):
        raise InputError(f"input {name!r} has shape {tuple(shape)}; the engine takes {len(lo)} dimensions "
                         f"({tuple(lo)} to {tuple(hi)})")
    for axis, (d, a, b) in enumerate(zip(shape, lo, hi)):
        if not a <= d <= b:
            what = "batch" if axis == 0 else f"input {name!r} dimension {axis} ="
            raise InputError(f"{what} {d} is outside the engine profile {a}..{b}")


@dataclass
class Timing:
    """Per-iteration milliseconds: copies and compute from CUDA events, end-to-end from the host clock."""

    h2d_ms: list[float] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)
    d2h_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    cuda_graph: bool = False

    def summary(self) -> dict[str, dict[str, float]]:
        stats = {}
        for key in ("h2d_ms", "compute_ms", "d2h_ms", "e2e_ms"):
            v = np.asarray(getattr(self, key), dtype=np.float64)
            stats[key] = {"mean": float(v.mean()), "median": float(np.median(v)),
                          "p90": float(np.percentile(v, 90)), "min": float(v.min())} if v.size else {}
        return stats


@dataclass
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype
    device: DeviceBuffer
    host: np.ndarray  # flat pinned buffer sized for the largest shape
    shape: Shape
    profile: tuple[Shape, Shape, Shape] | None = None

    def view(self) -> np.ndarray:
        return self.host[: int(np.prod(self.shape, dtype=np.int64))].reshape(self.shape)


class TrtRunner:
    """Deserialize an engine built by ``aspp-deploy build`` and run it on a non-default stream."""

    def __init__(self, engine_path: Path | str, cuda: str = "auto", use_cuda_graph: bool = False) -> None:
        path = Path(engine_path)
        self.typed = EngineManifest.read(path, need_preprocess=False)  # the size is checked here, the bytes below
        self.manifest = self.typed.to_dict()
        trt = import_tensorrt()
        self.cuda = get_cuda(cuda)
        check_engine_manifest(self.manifest, trt.__version__, self.cuda.device_name(), self.cuda.compute_capability())
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.typed.version_compatible:
            self._runtime.engine_host_code_allowed = True  # the engine carries its own lean runtime
        data = path.read_bytes()
        self.typed.verify_bytes(data, path)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise InputError(f"TensorRT {trt.__version__} cannot deserialize {path} (its log above says why)")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream_create()
        self.tensors = self._allocate()
        self.inputs = [t for t in self.tensors if t.is_input]
        self.outputs = [t for t in self.tensors if not t.is_input]
        self.use_cuda_graph = use_cuda_graph and self.cuda.supports_graphs
        self.graph_note = "" if self.use_cuda_graph or not use_cuda_graph else (
            f"CUDA graphs are not available through {self.cuda.name}: plain launches")
        self._graphs: dict[tuple[Shape, ...], Any] = {}
        self._events = [self.cuda.event_create() for _ in range(4)]

    def _allocate(self) -> list[_Tensor]:
        """Pinned host + device buffers per I/O tensor for the profile's largest shapes, bound by name."""
        trt = import_tensorrt()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        profiles: dict[str, tuple[Shape, Shape, Shape]] = {}
        for name in (n for n in names if is_input[n]):
            profiles[name] = input_profile(self.engine, name)
            self.context.set_input_shape(name, profiles[name][2])
        tensors = []
        for name in names:
            shape = profiles[name][2] if is_input[name] else dims_to_tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InputError(f"output {name!r} has a data-dependent shape {shape}, which TrtRunner does not support")
            dtype = numpy_dtype(self.engine.get_tensor_dtype(name).name)
            count = int(np.prod(shape, dtype=np.int64))
            tensor = _Tensor(name, is_input[name], dtype, self.cuda.malloc(count * dtype.itemsize),
                             self.cuda.pinned_empty((count,), dtype), shape, profiles.get(name))
            self.context.set_tensor_address(name, tensor.device.ptr)
            tensors.append(tensor)
        return tensors

    def _stage(self, feed: Mapping[str, np.ndarray]) -> None:
        """Check the feed against the profile, set input shapes, copy into the pinned buffers."""
        if set(feed) != {t.name for t in self.inputs}:
            raise InputError(f"feed has inputs {sorted(feed)}; the engine takes {sorted(t.name for t in self.inputs)}")
        changed = False
        for t in self.inputs:
            array = np.asarray(feed[t.name])
            assert t.profile is not None
            check_input_shape(t.name, array.shape, t.profile[0], t.profile[2])
            if array.shape != t.shape:
                if not self.context.set_input_shape(t.name, array.shape):
                    raise InputError(f"TensorRT refused shape {array.shape} for input {t.name!r}")
                t.shape, changed = tuple(array.shape), True
            try:
                np.copyto(t.view(), array, casting="same_kind")
            except TypeError:
                raise InputError(f"input {t.name!r} is {array.dtype}; the engine takes {t.dtype}") from None
        if changed:
            for t in self.outputs:
                t.shape = dims_to_tuple(self.context.get_tensor_shape(t.name))

    def _capture(self, key: tuple[Shape, ...]) -> Any:
        """As trtexec --useCudaGraph: run once, capture one enqueue, fall back to plain launches on failure."""
        self._enqueue()
        self.cuda.stream_sync(self.stream)
        graph = None
        try:
            self.cuda.begin_capture(self.stream)
            ok = self.context.execute_async_v3(self.stream.handle)
            graph = self.cuda.end_capture(self.stream)
            if not ok:
                raise CudaError("execute_async_v3 failed under stream capture")
            self._graphs[key] = self.cuda.graph_instantiate(graph)
        except CudaError as exc:
            self.cuda.clear_last_error()
            self.use_cuda_graph, self.graph_note = False, f"CUDA graph capture failed ({exc}): plain launches"
            return None
        finally:
            if graph is not None:
                self.cuda.graph_destroy(graph=graph)
        return self._graphs[key]

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise CudaError("TensorRT execute_async_v3 failed (its log above says why)")

    def _launch(self) -> None:
        if self.use_cuda_graph:
            key = tuple(t.shape for t in self.inputs)  # a graph freezes shapes (addresses never change here)
            graph_exec = self._graphs[key] if key in self._graphs else self._capture(key)
            if graph_exec is not None:
                self.cuda.graph_launch(graph_exec, self.stream)
                return
        self._enqueue()

    def _run(self, feed: Mapping[str, np.ndarray], timed: bool = False) -> dict[str, np.ndarray]:
        cuda, stream = self.cuda, self.stream
        marks = self._events if timed else [None] * 4

        def mark(i: int) -> None:
            if marks[i] is not None:
                cuda.event_record(marks[i], stream)

        self._stage(feed)
        mark(0)
        for t in self.inputs:
            cuda.memcpy_htod_async(t.device.ptr, t.view(), stream)
        mark(1)
        self._launch()
        mark(2)
        for t in self.outputs:
            cuda.memcpy_dtoh_async(t.view(), t.device.ptr, stream)
        mark(3)
        cuda.stream_sync(stream)
        return {t.name: t.view().copy() for t in self.outputs}

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{input name: array}`` -> ``{output name: array}`` (copies; synchronous)."""
        return self._run(feed)

    def time(self, feed: Mapping[str, np.ndarray], warmup: int = 10, iters: int = 100) -> Timing:
        """Per-iteration H2D / compute / D2H milliseconds (CUDA events) and end-to-end (host clock)."""
        timing = Timing()
        for i in range(warmup + iters):
            start = time.perf_counter_ns()
            self._run(feed, timed=True)
            e2e = (time.perf_counter_ns() - start) / 1e6
            if i >= warmup:
                ev = self._events
                timing.h2d_ms.append(self.cuda.event_elapsed_ms(ev[0], ev[1]))
                timing.compute_ms.append(self.cuda.event_elapsed_ms(ev[1], ev[2]))
                timing.d2h_ms.append(self.cuda.event_elapsed_ms(ev[2], ev[3]))
                timing.e2e_ms.append(e2e)
        timing.cuda_graph = self.use_cuda_graph
        return timing

    def close(self) -> None:
        """Release graphs, buffers, events, the stream, then the context, engine and runtime (in that order)."""
        if not hasattr(self, "context"):
            return
        for graph_exec in self._graphs.values():
            self.cuda.graph_destroy(graph_exec=graph_exec)
        self._graphs.clear()
        for t in self.tensors:
            t.device.free()
        for event in self._events:
            self.cuda.event_destroy(event)
        self.cuda.stream_destroy(self.stream)
        self.tensors, self.inputs, self.outputs = [], [], []  # frees the pinned host buffers
        del self.context, self.engine, self._runtime

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
