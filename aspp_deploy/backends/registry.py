"""The backends, as data: one ``Backend`` record each (its name, the files it runs, how to open one,
why it cannot run here). Adding a backend is one record here and its adapter module; every command
that lists, checks or opens backends reads this table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from aspp_deploy.backends.base import Runner
from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.backends.openvino_backend import OpenVinoRunner, openvino_unavailable_reason as openvino_reason
from aspp_deploy.backends.torch_backend import TorchRunner
from aspp_deploy.backends.trt_backend import TrtBackendRunner
from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.trt.cuda import get_cuda
from aspp_deploy.runtime.vocab import Runtime
from aspp_deploy.runtime.trt.runtime import tensorrt_installed, TRT_INSTALL_HINT

# (model, precision, device, threads, pipelined) -> runner; pipelined: other CPU work overlaps inference
# (the stream pipeline), so the runtime should not busy-wait between runs
Opener = Callable[[Optional[Path], str, str, int, bool], Runner]


@dataclass(frozen=True)
class Backend:
    name: str
    suffixes: Tuple[str, ...]   # the artifact files it runs
    artifact: str               # what they are, for messages: "PyTorch model", "ONNX", "TensorRT engine"
    made_by: str                # the command that makes one, for messages
    open: Opener
    unavailable: Callable[[], Optional[str]] = lambda: None  # why it cannot run here (None: it can)
    needs_model: bool = True    # False: opens the shipped model when none is given


def _open_torch(model: Optional[Path], precision: str, device: str, threads: int, pipelined: bool) -> Runner:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(model, device=device, precision=precision)


def _open_onnxruntime(model: Optional[Path], precision: str, device: str, threads: int, pipelined: bool) -> Runner:
    assert model is not None
    return OrtRunner(model, device=device, threads=threads, precision=precision, spinning=not pipelined)


def _open_trt(model: Optional[Path], precision: str, device: str, threads: int, pipelined: bool) -> Runner:
    assert model is not None
    return TrtBackendRunner(model)


def _open_openvino(model: Optional[Path], precision: str, device: str, threads: int, pipelined: bool) -> Runner:
    assert model is not None
    return OpenVinoRunner(model, device=device, threads=threads, precision=precision)


def trt_unavailable_reason() -> Optional[str]:
    """Why TensorRT cannot run here (checked in order: TensorRT, then a CUDA device), or None."""
    if not tensorrt_installed():
        return TRT_INSTALL_HINT

    try:
        if get_cuda().device_count() < 1:
            return "no CUDA device: TensorRT needs an NVIDIA GPU"
    except MissingDependencyError as exc:
        return str(exc)
    return None


def openvino_unavailable_reason() -> Optional[str]:
    """Why OpenVINO cannot run here (not installed: the pip command), or None."""
    return openvino_reason()


REGISTRY: Dict[str, Backend] = {b.name: b for b in (
    Backend("torch", (".pt", ".pth", ".pt2", ".ts", ".jit"), "PyTorch model", "`aspp-deploy train`", _open_torch,
            needs_model=False),
    Backend("onnxruntime", (".onnx",), "ONNX", "`aspp-deploy export`", _open_onnxruntime),
    Backend("trt", (".engine", ".plan", ".trt"), "TensorRT engine", "`aspp-deploy build`", _open_trt,
            unavailable=trt_unavailable_reason),
    Backend("openvino", (".onnx",), "ONNX", "`aspp-deploy export`", _open_openvino,
            unavailable=openvino_unavailable_reason),
)}
assert set(REGISTRY) == {r.value for r in Runtime}, "one registry record per runtime in runtime/vocab.py"
BACKENDS = tuple(REGISTRY)
SUFFIXES = {name: b.suffixes for name, b in REGISTRY.items()}


def get(backend: str) -> Backend:
    try:
        return REGISTRY[backend]
    except KeyError:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}") from None


def check_artifact_kind(backend: str, model: Path) -> None:
    b = get(backend)
    if model.suffix.lower() not in b.suffixes:
        raise InputError(f"{model.name} is not a {backend} model: the {backend} backend takes "
                         f"{' / '.join(b.suffixes)} files")


def unavailable_reason(backend: str) -> Optional[str]:
    """Why ``backend`` cannot run here, or None."""
    return get(backend).unavailable()


def require_backend(backend: str) -> None:
    reason = unavailable_reason(backend)
    if reason:
        raise MissingDependencyError(reason)


def open_runner(backend: str, model: Optional[Path], precision: str = "fp32", device: str = "cpu",
                threads: int = 0, pipelined: bool = False) -> Runner:
    """``backend``'s runner on ``model``; ``pipelined``: the caller overlaps other CPU work with inference
    (the stream pipeline), so runtimes that busy-wait between runs (ONNX Runtime) are told not to."""
    b = get(backend)
    if model is not None:
        check_artifact_kind(backend, model)
    elif b.needs_model:
        raise InputError(f"the {backend} backend needs --model MODEL{b.suffixes[0]} (see {b.made_by})")
    require_backend(backend)
    return b.open(model, precision, device, threads, pipelined)
