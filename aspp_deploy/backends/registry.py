"""Open a runner by backend name; say why one cannot run here instead of failing later."""

from __future__ import annotations

from pathlib import Path

from aspp_deploy.backends.base import Runner
from aspp_deploy.errors import InputError, MissingDependencyError

BACKENDS = ("torch", "onnxruntime", "trt", "openvino")
SUFFIXES = {"torch": (".pt", ".pth", ".pt2", ".ts", ".jit"), "onnxruntime": (".onnx",), "trt": (".engine", ".plan", ".trt"),
            "openvino": (".onnx",)}


def check_artifact_kind(backend: str, model: Path) -> None:
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if model.suffix.lower() not in SUFFIXES[backend]:
        raise InputError(f"{model.name} is not a {backend} model: the {backend} backend takes "
                         f"{' / '.join(SUFFIXES[backend])} files")


def trt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (checked in order: TensorRT, then a CUDA device), or None."""
    from aspp_deploy.trt.runtime import TRT_INSTALL_HINT, tensorrt_installed

    if not tensorrt_installed():
        return TRT_INSTALL_HINT
    from aspp_deploy.trt.cuda import get_cuda

    try:
        if get_cuda().device_count() < 1:
            return "no CUDA device: TensorRT needs an NVIDIA GPU"
    except MissingDependencyError as exc:
        return str(exc)
    return None


def openvino_unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here (not installed: the pip command), or None."""
    from aspp_deploy.backends.openvino_backend import openvino_unavailable_reason as reason

    return reason()


def require_backend(backend: str) -> None:
    if backend == "trt" and (reason := trt_unavailable_reason()):
        raise MissingDependencyError(reason)
    if backend == "openvino" and (reason := openvino_unavailable_reason()):
        raise MissingDependencyError(reason)


def open_runner(backend: str, model: Path | None, precision: str = "fp32", device: str = "cpu",
                threads: int = 0) -> Runner:
    if model is not None:
        check_artifact_kind(backend, model)
    if backend == "torch":
        import torch

        from aspp_deploy.backends.torch_backend import TorchRunner

        if threads:
            torch.set_num_threads(threads)
        return TorchRunner(model, device=device, precision=precision)
    if backend == "onnxruntime":
        from aspp_deploy.backends.onnxruntime_backend import OrtRunner

        if model is None:
            raise InputError("the onnxruntime backend needs --model MODEL.onnx (see `aspp-deploy export`)")
        return OrtRunner(model, device=device, threads=threads, precision=precision)
    if backend == "trt":
        require_backend("trt")
        from aspp_deploy.backends.trt_backend import TrtBackendRunner

        if model is None:
            raise InputError("the trt backend needs --model MODEL.engine (see `aspp-deploy build`)")
        return TrtBackendRunner(model)
    if backend == "openvino":
        require_backend("openvino")
        from aspp_deploy.backends.openvino_backend import OpenVinoRunner

        if model is None:
            raise InputError("the openvino backend needs --model MODEL.onnx (see `aspp-deploy export`)")
        return OpenVinoRunner(model, device=device, threads=threads, precision=precision)
    raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
