"""``aspp-deploy build``: a TensorRT engine from an ONNX artifact, on the installed TensorRT."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.errors import InputError
from aspp_deploy.runtime.calibration import DEFAULT_CALIB_SIZE
from aspp_deploy.runtime.vocab import Precision
from aspp_deploy.runtime.trt.plan import lint_profile as lint_version


class CalibAlgo(str, Enum):
    entropy = "entropy"
    minmax = "minmax"


def parse_shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.lower().split("x")]
    except ValueError:
        raise InputError(f"shape {text!r} must look like 1x3x512x512") from None
    if len(dims) != 4 or min(dims) < 1:
        raise InputError(f"shape {text!r} must be four positive sizes, NxCxHxW")
    return dims


@handle_errors
def build(
    onnx: Annotated[Path, typer.Option("--onnx", "--model", help="ONNX from `export` (fp32) or `quantize` (fp16 / int8 Q/DQ).")] = Path("artifacts/model.onnx"),
    precision: Annotated[Precision, typer.Option(help="Engine precision.")] = Precision.fp32,
    out: Annotated[Optional[Path], typer.Option(help="Engine path (default: beside the ONNX, model.PRECISION.engine).")] = None,
    legacy_int8: Annotated[bool, typer.Option("--legacy-int8", help="INT8 by builder flag + calibrator from the FP32 ONNX (TensorRT 8.x-10.x).")] = False,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images for --legacy-int8 (default: shipped calibration/).")] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration images to use.")] = DEFAULT_CALIB_SIZE,
    calib_algo: Annotated[CalibAlgo, typer.Option(help="Calibrator.")] = CalibAlgo.entropy,
    calib_cache: Annotated[Optional[Path], typer.Option(help="Calibration cache file (read if it matches, written after).")] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min", help="Profile min shape NxCxHxW (dynamic ONNX).")] = None,
    opt_shape: Annotated[Optional[str], typer.Option("--opt", help="Profile opt shape.")] = None,
    max_shape: Annotated[Optional[str], typer.Option("--max", help="Profile max shape.")] = None,
    workspace_mb: Annotated[int, typer.Option(help="Workspace memory pool limit (MiB).")] = 1024,
    opt_level: Annotated[Optional[int], typer.Option(help="Builder optimization level 0-5 (TensorRT >= 8.6).")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Persistent timing cache file.")] = None,
    version_compatible: Annotated[bool, typer.Option("--version-compatible", help="Engine runs on later TensorRT versions.")] = False,
    hardware_compat: Annotated[bool, typer.Option("--hardware-compat", help="Engine runs on all Ampere+ GPUs.")] = False,
    dla_core: Annotated[Optional[int], typer.Option(help="DLA core (Jetson Orin), with GPU fallback.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the engine manifest as JSON.")] = None,
) -> None:
    """Build a TensorRT engine, choosing the build path by the installed TensorRT version."""
    from aspp_deploy.backends.registry import require_backend
    from aspp_deploy.export.graph import load_onnx
    from aspp_deploy.export.onnx_kind import onnx_kind
    from aspp_deploy.export.trt_check import check_for_trt, group_findings
    from aspp_deploy.export.manifest import read_onnx_manifest
    from aspp_deploy.runtime.trt.build import engine_from_onnx
    from aspp_deploy.runtime.trt.plan import BuildRequest, parse_version
    from aspp_deploy.runtime.trt.runtime import import_tensorrt

    if not onnx.is_file():
        raise InputError(f"ONNX model not found: {onnx} (make it with `aspp-deploy export`)")
    require_backend("trt")
    trt = import_tensorrt()
    version = parse_version(trt.__version__)
    model = load_onnx(onnx)
    kind = onnx_kind(model)
    report = check_for_trt(model, lint_version(version))
    for group in group_findings([report]):  # one line per kind of finding, not per node
        nodes = ", ".join(group.nodes[:3]) + (f" and {len(group.nodes) - 3} more" if len(group.nodes) > 3 else "")
        console.print(f"pre-flight {group.severity} ({group.op}, {len(group.nodes)} node(s): {nodes}): "
                      f"{group.message}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise InputError(f"{onnx.name} would not parse on TensorRT {trt.__version__} (see pre-flight above)")
    req = BuildRequest(precision=precision.value, onnx_kind=kind, legacy_int8=legacy_int8, dla_core=dla_core,
                       version_compatible=version_compatible, hardware_compat=hardware_compat,
                       opt_level=opt_level)
    profile: list[dict[str, list[int]] | None] = [None, None, None]
    if min_shape or opt_shape or max_shape:
        if not (min_shape and opt_shape and max_shape):
            raise InputError("--min, --opt and --max go together")
        input_name = model.graph.input[0].name  # the model's own name ("input" for our exports)
        profile = [{input_name: parse_shape(s)} for s in (min_shape, opt_shape, max_shape)]
    engine = out or onnx.with_name(f"{onnx.stem}.{precision.value}.engine")
    batches, data_key, onnx_manifest = None, None, None
    if precision is Precision.int8 and kind != "qdq":
        from aspp_deploy.runtime.calibration import (SHIPPED_CALIBRATION, CalibrationData, calibration_files,
                                                       data_digest)

        onnx_manifest = read_onnx_manifest(onnx)  # calibration needs its preprocessing: none is an error here
        image_input = onnx_manifest.typed.input
        if image_input is None:
            raise InputError(f"{onnx}: its manifest records no input tensor to calibrate (export it again)")
        files = calibration_files(calib or SHIPPED_CALIBRATION, calib_size)
        batches = CalibrationData(files, onnx_manifest.preprocess(), image_input.name, image_input.static_batch or 1)
        data_key = data_digest(files)
    if onnx_manifest is None:
        try:  # read (and its sha256 checked) once
            onnx_manifest = read_onnx_manifest(onnx)
        except InputError:
            pass  # an ONNX without an aspp-deploy manifest: the engine manifest records no preprocessing
    manifest = engine_from_onnx(onnx, engine, req, workspace_mb=workspace_mb, opt_level=opt_level,
                                entry=onnx_manifest.typed if onnx_manifest is not None else None,
                                timing_cache=timing_cache, calib_batches=batches,
                                calib_cache=calib_cache or engine.with_suffix(".calib"), calib_data_key=data_key,
                                calib_algorithm=calib_algo.value, dla_core=dla_core,
                                min_shapes=profile[0], opt_shapes=profile[1], max_shapes=profile[2],
                                log=lambda m: console.print(m, highlight=False))
    out_console.print(f"built {engine} with TensorRT {manifest['tensorrt_version']} "
                      f"({manifest['build_seconds']} s); equivalent: {manifest['trtexec']}", highlight=False)
    write_json(json_out, manifest)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(build)
