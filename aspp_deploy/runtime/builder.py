"""Which ONNX and which TensorRT recipe a device gets, decided from its TensorRT version; then the build.

``choose_build`` is pure (no TensorRT): the bundle's README table and ``bundle.json`` are generated
from it for every supported version, and ``python -m aspp_deploy.runtime build`` runs the very same
choice on the device. The rules follow shared/TENSORRT_NOTES.md:

* FP16: 8.x builds the FP32 ONNX with the FP16 flag; 10.x builds the FP16 (mixed-precision) ONNX
  strongly typed when the bundle has one, else the FP32 ONNX with the flag; 11.x only the FP16 ONNX.
* INT8: the Q/DQ ONNX wherever its pre-flight says the parser takes it (INT8+FP16 flags on 8.x,
  strongly typed on 10.x/11.x); otherwise, on 8.x-10.x, the FP32 ONNX calibrated on the device from the
  shipped calibration images (legacy implicit INT8), writing a calibration cache the next build reuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.manifest import MANIFEST_NAME, ArtifactEntry, Manifest
from aspp_deploy.runtime.vocab import Precision, Target
from aspp_deploy.runtime.trt.plan import BuildPlan, BuildRequest, PlanError, Version, lint_profile, make_build_plan

# The TensorRT versions a Jetson bundle documents (TENSORRT_NOTES.md) and the JetPack releases that ship them.
JETPACK = [("5.1.x", (8, 5)), ("6.0", (8, 6)), ("6.1 / 6.2", (10, 3)), ("7.0 (Thor)", (10, 13)),
           ("7.2.2+ (AGX Orin, Thor)", (11, 4))]
CALIB_CACHE_SUFFIX = ".int8.calib"



def read_entries(folder: Path | str) -> Dict[str, ArtifactEntry]:
    """The verified entries of ``folder/manifest.json`` (JSON only: no onnx package needed)."""
    manifest = Manifest.read_required(folder, "it records each ONNX file's preprocessing and precision")
    return manifest.entries(folder)


@dataclass(frozen=True)
class DeviceBuild:
    """The ONNX file to build and how, for one precision on one TensorRT version."""

    precision: str
    onnx: str  # file name inside the models folder
    request: BuildRequest
    plan: BuildPlan
    notes: List[str] = field(default_factory=list)

    @property
    def calibrates(self) -> bool:
        return self.request.legacy_int8

    def to_dict(self) -> Dict[str, Any]:
        return {"precision": self.precision, "onnx": self.onnx, "onnx_kind": self.request.onnx_kind,
                "legacy_int8": self.request.legacy_int8, "strongly_typed": self.plan.strongly_typed,
                "builder_flags": self.plan.builder_flags, "notes": self.notes + self.plan.notes}


def _variant(models: Mapping[str, ArtifactEntry], fp32: str, precision: str, profile: str) -> tuple:
    """(file name, None) of the reduced-precision ONNX made from ``fp32`` that parses on ``profile``,
    or (None, why not)."""
    found = [(name, e) for name, e in sorted(models.items())
             if e.precision == precision and e.source_onnx == fp32
             and (precision != "int8" or e.target is Target.trt) and not e.deepstream]
    if not found:
        return None, f"the bundle has no {precision} ONNX"
    for name, entry in found:
        versions = entry.trt_versions
        if versions is None or profile in versions:
            return name, None
    return None, f"{found[0][0]} does not pass the TensorRT {profile} pre-flight (it lists {found[0][1].trt_versions})"


def choose_build(models: Mapping[str, ArtifactEntry], onnx: str, precision: str, version: Version, *,
                 legacy_int8: bool = False, can_calibrate: bool = True) -> DeviceBuild:
    """The build for ``precision`` on TensorRT ``version``; ``onnx`` names the FP32 ONNX (or a variant,
    built as it is); ``models``: the folder's verified entries (``read_entries``). InputError (a
    PlanError) names the way out when no path exists."""
    name = f"TensorRT {version[0]}.{version[1]}"
    entry = models.get(onnx)
    if entry is None:
        raise InputError(f"{onnx} has no entry in {MANIFEST_NAME}: use the ONNX files the bundle ships")
    kind = {Precision.fp32: "fp32", Precision.fp16: "fp16", Precision.int8: "qdq"}[entry.precision]
    profile = lint_profile(version)
    notes: List[str] = []
    if kind != "fp32":  # a reduced-precision ONNX given directly: build exactly that
        req = BuildRequest(precision=precision, onnx_kind=kind)  # type: ignore[arg-type]
        return DeviceBuild(precision, onnx, req, make_build_plan(version, req), notes)
    if precision == "fp32":
        req = BuildRequest()
    elif precision == "fp16":
        fp16, why = _variant(models, onnx, "fp16", profile)
        if version[0] == 8 or (fp16 is None and version[0] == 10):
            req = BuildRequest(precision="fp16", onnx_kind="fp32")
            notes.append(f"FP32 ONNX with the FP16 builder flag ({why})" if version[0] == 10 else
                         "FP32 ONNX with the FP16 builder flag (the 8.x path)")
        elif fp16 is None:
            raise PlanError(f"{name} builds FP16 only from an FP16 ONNX and {why}: make the bundle with "
                            "`aspp-deploy bundle --precision fp16`")
        else:
            onnx, req = fp16, BuildRequest(precision="fp16", onnx_kind="fp16")
            notes.append("FP16 (mixed-precision) ONNX, strongly typed")
    elif precision == "int8":
        qdq, why = (None, "--legacy-int8 was asked for") if legacy_int8 else _variant(models, onnx, "int8", profile)
        if legacy_int8:
            req = BuildRequest(precision="int8", onnx_kind="fp32", legacy_int8=True)  # the plan refuses it on 11.x
            notes.append("FP32 ONNX calibrated on this device with the INT8 calibrator (--legacy-int8)")
        elif qdq is not None:
            onnx, req = qdq, BuildRequest(precision="int8", onnx_kind="qdq")
            notes.append("Q/DQ ONNX (explicit quantization: no calibration on the device)")
        elif version[0] >= 11:
            raise PlanError(f"{name} builds INT8 only from a Q/DQ ONNX and {why}: make the bundle with "
                            "`aspp-deploy bundle --precision int8`")
        elif not can_calibrate:
            raise PlanError(f"INT8 on {name}: {why}, and no calibration images or cache were given for "
                            "calibrating the FP32 ONNX here (--calib DIR)")
        else:
            req = BuildRequest(precision="int8", onnx_kind="fp32", legacy_int8=True)
            notes.append(f"FP32 ONNX calibrated on this device with the INT8 calibrator ({why})")
    else:
        raise InputError(f"unknown precision {precision!r}: choose fp32, fp16 or int8")
    return DeviceBuild(precision, onnx, req, make_build_plan(version, req), notes)


def trtexec_line(choice: DeviceBuild, models_dir: str, engine: str, calib_cache: Optional[str] = None,
                 workspace_mb: Optional[int] = None) -> str:
    """The trtexec command that builds the same engine (a legacy INT8 build needs the cache to exist)."""
    from aspp_deploy.runtime.trt.build import trtexec_command

    onnx = f"{models_dir.rstrip('/')}/{choice.onnx}" if models_dir else choice.onnx
    return trtexec_command(choice.plan, onnx, engine, workspace_mb=workspace_mb,
                           calib_cache=calib_cache if choice.calibrates else None)


def build_engine(choice: DeviceBuild, models_dir: Path, out: Path, *, calib_dir: Optional[Path] = None,
                 calib_cache: Optional[Path] = None, calib_size: int = 0, workspace_mb: Optional[int] = 1024,
                 cuda: str = "auto", log: Callable[[str], None] = lambda m: None) -> Dict[str, Any]:
    """Build ``out`` (+ ``out.json``) on the installed TensorRT; returns the engine manifest."""
    from aspp_deploy.runtime.trt.build import engine_from_onnx

    onnx = Path(models_dir) / choice.onnx
    batches, data_key = None, None
    if choice.calibrates:
        from aspp_deploy.runtime.calibration import CalibrationData, calibration_files, data_digest

        if calib_dir is None:
            raise InputError("legacy INT8 calibrates on images: give --calib DIR (the bundle ships calibration/images)")
        entry = Manifest.read_required(models_dir, "it records the ONNX's preprocessing").entry(choice.onnx, models_dir)
        if entry is None or entry.input is None:
            raise InputError(f"{choice.onnx} has no entry with its input tensor in {Path(models_dir) / MANIFEST_NAME}")
        files = calibration_files(calib_dir, calib_size)
        batches = CalibrationData(files, entry.preprocess, entry.input.name, entry.static_batch or 1)
        data_key = data_digest(files)
        log(f"calibrating on {len(files)} image(s) from {calib_dir}")
    return engine_from_onnx(onnx, out, choice.request, workspace_mb=workspace_mb, calib_batches=batches,
                            calib_cache=calib_cache or out.with_suffix(".calib"), calib_data_key=data_key,
                            cuda=cuda, log=log)
