"""Which rows ``compare`` runs, where their artifacts live, and how each is made."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aspp_deploy.backends.base import Runner
from aspp_deploy.backends import registry  # its functions looked up when called (tests stand in for them)
from aspp_deploy.backends.registry import open_runner
from aspp_deploy.backends.torch_backend import TorchRunner
from aspp_deploy.bench.compare import RowSpec
from aspp_deploy.errors import InputError
from aspp_deploy.io import sha256_file
from aspp_deploy.runtime.trt.build import engine_from_onnx
from aspp_deploy.runtime.trt.plan import BuildRequest, parse_version
from aspp_deploy.runtime.trt.runtime import import_tensorrt

# (precision label, ONNX file name, quantize arguments); made from the FP32 ONNX on demand.
ONNX_VARIANTS = [
    ("fp16", "model.fp16.onnx", {"precision": "fp16"}),
    ("int8 (cpu QDQ)", "model.int8-cpu.onnx", {"precision": "int8", "target": "cpu"}),
    ("int8 (TensorRT QDQ)", "model.int8-trt.onnx", {"precision": "int8", "target": "trt"}),
]


def _source(onnx_path: Path) -> dict | None:
    """The ``source`` record of an ONNX file's manifest ({} when it has none), None without a manifest."""
    from aspp_deploy.export.manifest import read_onnx_manifest

    try:
        return read_onnx_manifest(onnx_path).typed.source or {}
    except InputError:
        return None


def made_from(variant: Path, fp32: Path) -> bool:
    """True when ``variant`` exists and was quantized from this very FP32 ONNX."""
    source = _source(variant) if variant.is_file() else None
    return source is not None and source.get("onnx_sha256") == sha256_file(fp32)


def variant_is_stale(variant: Path, fp32: Path) -> bool:
    """True when a quantized ONNX was made from another FP32 ONNX (the FP32 file's sha256 covers
    the model and spec it was made from)."""
    if not variant.is_file():
        return False
    source = _source(variant)
    return source is None or not fp32.is_file() or source.get("onnx_sha256") != sha256_file(fp32)


class StaleWhenAsked:
    """A ``RowSpec.refresh`` that is decided when the row runs, not when the rows are listed: the
    OpenVINO INT8 row reads the file the ONNX Runtime INT8 row has just remade, and must not
    quantize it a second time."""

    def __init__(self, variant: Path, fp32: Path) -> None:
        self.variant, self.fp32 = variant, fp32

    def __bool__(self) -> bool:
        return variant_is_stale(self.variant, self.fp32)


def _cuda_reason() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device (PyTorch sees none)"


def _ort_provider_reason(provider: str) -> str | None:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return None
    return f"ONNX Runtime here has no {provider} (installed: {', '.join(ort.get_available_providers())})"


def default_row_specs(torch_model: Path | None, artifacts: Path, export_fn, quantize_fn,
                      no_torch: str | None = None) -> list[RowSpec]:
    """Every backend x precision; the first runnable row is the reference (PyTorch FP32, or ONNX
    Runtime FP32 when the model came as ONNX: ``no_torch`` says why there is no PyTorch row)."""
    fp32 = artifacts / "model.onnx"
    cuda = no_torch or _cuda_reason()
    specs = [
        RowSpec("torch", "fp32", "cpu", torch_model, unavailable=no_torch),
        RowSpec("torch", "fp32", "cuda", torch_model, unavailable=cuda),
        RowSpec("torch", "fp16", "cuda", torch_model, unavailable=cuda, note="channels_last"),
        RowSpec("onnxruntime", "fp32", "cpu", fp32, produce=export_fn),
    ]
    for precision, name, kwargs in ONNX_VARIANTS:
        path = artifacts / name
        specs.append(RowSpec("onnxruntime", precision, "cpu", path, refresh=variant_is_stale(path, fp32),
                             produce=lambda kw=kwargs, p=path: quantize_fn(fp32, p, **kw)))
    # OpenVINO on the CPU reads the same ONNX files: FP32 and the cpu-target INT8 (Q/DQ).

    ov_reason = registry.openvino_unavailable_reason()
    specs.append(RowSpec("openvino", "fp32", "cpu", fp32, produce=export_fn, unavailable=ov_reason,
                         note="inference precision f32"))
    cpu_int8 = artifacts / "model.int8-cpu.onnx"
    cpu_int8_kwargs = next(kw for _, name, kw in ONNX_VARIANTS if name == cpu_int8.name)
    specs.append(RowSpec("openvino", "int8 (cpu QDQ)", "cpu", cpu_int8, unavailable=ov_reason,
                         refresh=StaleWhenAsked(cpu_int8, fp32),  # type: ignore[arg-type]
                         produce=lambda: quantize_fn(fp32, cpu_int8, **cpu_int8_kwargs)))
    specs.append(RowSpec("onnxruntime", "fp32", "cuda", fp32, produce=export_fn,
                         unavailable=_ort_provider_reason("CUDAExecutionProvider")))
    specs.append(RowSpec("onnxruntime", "fp32", "tensorrt", fp32, produce=export_fn,
                         unavailable=_ort_provider_reason("TensorrtExecutionProvider")))
    trt_reason = registry.trt_unavailable_reason()
    variants = {name: (kw, artifacts / name) for _, name, kw in ONNX_VARIANTS}

    def onnx_for_engine(name: str) -> Path:
        if name == "model.onnx":
            return fp32 if fp32.is_file() else export_fn()
        kwargs, path = variants[name]
        return path if path.is_file() and not variant_is_stale(path, fp32) else quantize_fn(fp32, path, **kwargs)

    for precision in ("fp32", "fp16", "int8"):
        engine = artifacts / f"model.{precision}.engine"
        stale = trt_reason is None and engine_is_stale(engine, artifacts)
        specs.append(RowSpec("trt", precision, "cuda", engine, unavailable=trt_reason, refresh=stale,
                             produce=lambda p=precision, e=engine: build_engine(p, e, onnx_for_engine)))
    return specs


def row_opener(source, preprocess, threads: int) -> Callable[[RowSpec], Runner]:
    """Opens a row's runner: torch rows run ``source`` (the PyTorch model the FP32 ONNX was exported
    from, with ``preprocess``), every other row its artifact on its backend with ``threads``."""
    def open_row(s: RowSpec) -> Runner:
        if s.backend == "torch":
            return TorchRunner(device=s.device, precision=s.precision, source=source, preprocess=preprocess)
        return open_runner(s.backend, s.artifact, s.precision, s.device, threads)

    return open_row


def engine_source(precision: str, trt_version: tuple[int, int]) -> tuple[str, str]:
    """(ONNX file in the artifacts folder, its kind) that a ``precision`` engine is built from on
    ``trt_version``: FP16 from the FP16 ONNX where strongly typed builds exist (10.0+; 11 has no
    FP16 flag), from the FP32 ONNX with the FP16 flag on 8.x; INT8 always from the TensorRT Q/DQ ONNX."""
    if precision == "fp32":
        return "model.onnx", "fp32"
    if precision == "fp16":
        return ("model.fp16.onnx", "fp16") if trt_version >= (10, 0) else ("model.onnx", "fp32")
    if precision == "int8":
        return "model.int8-trt.onnx", "qdq"
    raise ValueError(f"unknown precision {precision!r}")


def engine_is_stale(engine: Path, artifacts: Path) -> bool:
    """True when an engine exists but its source ONNX has changed since it was built."""
    import json

    info = engine.with_name(engine.name + ".json")
    if not engine.is_file():
        return False
    try:
        source = json.loads(info.read_text())["source_onnx"]
    except (OSError, ValueError, KeyError):
        return True
    onnx = artifacts / Path(source["path"]).name
    return not onnx.is_file() or sha256_file(onnx) != source["sha256"]


def build_engine(precision: str, engine: Path, onnx_for_engine) -> Path:
    from aspp_deploy.export.manifest import read_onnx_manifest

    name, kind = engine_source(precision, parse_version(import_tensorrt().__version__))
    onnx = onnx_for_engine(name)
    engine_from_onnx(onnx, engine, BuildRequest(precision=precision, onnx_kind=kind),
                     entry=read_onnx_manifest(onnx).typed)
    return engine

