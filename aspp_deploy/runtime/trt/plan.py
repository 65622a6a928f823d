"""Which TensorRT build recipe fits a request, decided from the TensorRT version number alone.

Pure Python (no tensorrt import), so every version's rules are testable anywhere. The rules follow
shared/TENSORRT_NOTES.md: 8.5/8.6 are weakly typed (explicit batch + FP16/INT8 flags, calibrators);
10.x prefers strongly typed networks and keeps the flags and calibrators as deprecated paths;
11.x is always strongly typed, with precision carried by the ONNX itself.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal, Tuple

from aspp_deploy.errors import InputError

Precision = Literal["fp32", "fp16", "int8"]
OnnxKind = Literal["fp32", "fp16", "qdq"]
Version = Tuple[int, int]  # typing.Tuple: the Jetson runtime also runs on Python 3.8 (JetPack 5)

PRECISIONS = ("fp32", "fp16", "int8")
ONNX_KINDS = ("fp32", "fp16", "qdq")
QUANTIZE_FP16 = "`aspp-deploy quantize --precision fp16`"
QUANTIZE_INT8 = "`aspp-deploy quantize --precision int8`"
LAST_10X_WITH_DLA = (10, 7)
FIRST_11X_WITH_DLA = (11, 4)  # 11.4.1 on Jetson AGX Orin with JetPack 7.2.2+


class PlanError(InputError):
    """The requested build does not exist for this TensorRT version (the message names the alternative)."""


def parse_version(text: str) -> Version:
    """``"10.3.0.26"`` -> ``(10, 3)``."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if not match:
        raise InputError(f"not a TensorRT version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def feature_support(v: Version) -> dict[str, bool]:
    """Which optional TensorRT API features exist in version ``v`` (major, minor)."""
    return {
        "explicit_batch_flag": v < (10, 0),  # required on 8.x, ignored on 10.x, gone from the enum in 11
        "strongly_typed": v >= (10, 0),
        "weak_typing_flags": v < (11, 0),  # BuilderFlag.FP16 / INT8
        "int8_calibrator": v < (11, 0),
        "builder_optimization_level": v >= (8, 6),
        "hardware_compatibility": v >= (8, 6),
        "version_compatible": v >= (8, 6),
        "create_execution_context_strategy": v >= (10, 0),
        "parser_error_node_name": v >= (10, 0),
        "device_memory_size_v2": v >= (10, 1),
        "dla": (8, 5) <= v <= LAST_10X_WITH_DLA or v >= FIRST_11X_WITH_DLA,
    }


@dataclass(frozen=True)
class BuildRequest:
    """What the user asks for. ``onnx_kind`` says what the ONNX file holds."""

    precision: Precision = "fp32"
    onnx_kind: OnnxKind = "fp32"
    legacy_int8: bool = False  # implicit INT8: FP32 ONNX + INT8 flag + calibrator (8.x-10.x)
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compat: bool = False  # hardware compatibility level AMPERE_PLUS
    strongly_typed: bool | None = None  # None: the version's recommended choice
    opt_level: int | None = None  # builder_optimization_level 0..5; None: TensorRT's default (3)


@dataclass(frozen=True)
class BuildPlan:
    """How to configure the builder for one request on one TensorRT version."""

    trt_version: Version
    precision: str
    onnx_kind: str
    explicit_batch_flag: bool
    strongly_typed: bool
    builder_flags: list[str]  # names of trt.BuilderFlag members to set
    use_calibrator: bool
    opt_level: int | None = None
    version_compatible: bool = False
    hardware_compatibility_level: str | None = None  # name of a trt.HardwareCompatibilityLevel member
    dla_core: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def network_flags(self) -> list[str]:
        """Names of the trt.NetworkDefinitionCreationFlag members to set."""
        return ["EXPLICIT_BATCH"] if self.explicit_batch_flag else (["STRONGLY_TYPED"] if self.strongly_typed else [])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trt_version"] = f"{self.trt_version[0]}.{self.trt_version[1]}"
        d["network_flags"] = self.network_flags
        return d


def make_build_plan(trt_version: Version, req: BuildRequest, *, dla_cores: int | None = None) -> BuildPlan:
    """The build recipe for ``req`` on ``trt_version``, or ``PlanError`` naming the alternative.

    ``dla_cores`` is what the target reports (``builder.num_DLA_cores``); None when unknown.
    """
    v = trt_version
    name = f"TensorRT {v[0]}.{v[1]}"
    if v < (8, 5) or v[0] == 9 or v[0] > 11:
        raise PlanError(f"{name} is not supported: aspp-deploy builds with TensorRT 8.5, 8.6, 10.x or 11.x")
    if v[0] == 11 and req.legacy_int8:
        raise PlanError(f"TensorRT 11 removed INT8 calibrators; quantize to a Q/DQ ONNX with {QUANTIZE_INT8} "
                        "and build that")
    _check_combination(v, req)
    feats = feature_support(v)
    if req.opt_level is not None:
        if not feats["builder_optimization_level"]:
            raise PlanError(f"{name} has no builder optimization level (it arrived in 8.6): "
                            "leave the optimization level unset")
        if not 0 <= req.opt_level <= 5:
            raise PlanError(f"builder optimization level must be 0..5 (TensorRT's default is 3), got {req.opt_level}")
    if req.version_compatible and not feats["version_compatible"]:
        raise PlanError(f"{name} cannot build version-compatible engines (8.6+): build on the target "
                        "with its own TensorRT instead")
    if req.hardware_compat and not feats["hardware_compatibility"]:
        raise PlanError(f"{name} cannot build hardware-compatible engines (8.6+): build on the target GPU instead")

    notes: list[str] = []
    if req.dla_core is not None:
        _check_dla(v, req, feats, dla_cores, notes)
    if v[0] == 8:
        strongly, flags = _plan_8x(v, req, notes)
    elif v[0] == 10:
        strongly, flags = _plan_10x(req, notes)
    else:
        strongly, flags = _plan_11x(req, notes)
    if req.dla_core is not None:
        flags.append("GPU_FALLBACK")
    if req.version_compatible:
        flags.append("VERSION_COMPATIBLE")
        notes.append("version-compatible: runs on later TensorRT runtimes (lean runtime embedded), maybe slower")
    return BuildPlan(
        trt_version=v, precision=req.precision, onnx_kind=req.onnx_kind,
        explicit_batch_flag=feats["explicit_batch_flag"], strongly_typed=strongly, builder_flags=flags,
        use_calibrator=req.legacy_int8, opt_level=req.opt_level, version_compatible=req.version_compatible,
        hardware_compatibility_level="AMPERE_PLUS" if req.hardware_compat else None,
        dla_core=req.dla_core, notes=notes,
    )


def _weak_flags(precision: str) -> list[str]:
    return {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]


def _check_combination(v: Version, req: BuildRequest) -> None:
    """Refuse precision / ONNX-kind pairs that do not exist on any version."""
    if req.precision not in PRECISIONS:
        raise PlanError(f"unknown precision {req.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if req.onnx_kind not in ONNX_KINDS:
        raise PlanError(f"unknown ONNX kind {req.onnx_kind!r}: choose one of {', '.join(ONNX_KINDS)}")
    if req.legacy_int8 and req.precision != "int8":
        raise PlanError("legacy_int8 (calibrated implicit INT8) only applies to precision int8")
    if req.legacy_int8 and req.onnx_kind != "fp32":
        raise PlanError(f"legacy INT8 calibration starts from the FP32 ONNX, but this ONNX is {req.onnx_kind}: "
                        "build it without legacy_int8")
    if req.onnx_kind == "qdq" and req.precision != "int8":
        raise PlanError(f"a Q/DQ ONNX builds an INT8 engine: use precision int8, or build the "
                        f"{'fp32' if req.precision == 'fp32' else 'fp16'} ONNX for {req.precision}")
    if req.onnx_kind == "fp16" and req.precision != "fp16":
        raise PlanError("an fp16 ONNX builds an FP16 engine: use precision fp16, or build the fp32 ONNX "
                        "for fp32 and the Q/DQ ONNX for int8")
    if req.precision == "int8" and req.onnx_kind == "fp32" and not req.legacy_int8:
        hint = f"quantize to a Q/DQ ONNX with {QUANTIZE_INT8} and build that"
        if v < (11, 0):
            hint += ", or set legacy_int8 to calibrate this FP32 ONNX with an INT8 calibrator"
        raise PlanError(f"INT8 from an FP32 ONNX needs quantization: {hint}")


def _check_dla(v: Version, req: BuildRequest, feats: dict[str, bool], dla_cores: int | None,
               notes: list[str]) -> None:
    core = req.dla_core
    assert core is not None
    name = f"TensorRT {v[0]}.{v[1]}"
    if core < 0:
        raise PlanError(f"DLA core must be 0 or more, got {core}")
    if not feats["dla"]:
        if v[0] == 10:
            raise PlanError(f"{name} has no DLA: 10.7 was the last 10.x release with DLA (JetPack 6 ships 10.3); "
                            "build for the GPU (drop the DLA core)")
        raise PlanError(f"{name} has no DLA: TensorRT 11 has DLA from 11.4.1 on Jetson AGX Orin with "
                        "JetPack 7.2.2+; build for the GPU (drop the DLA core)")
    if dla_cores is not None and core >= dla_cores:
        if dla_cores == 0:
            raise PlanError("this device has no DLA (DLA cores are on Jetson Xavier/Orin, not on desktop GPUs or "
                            "Jetson Thor): build for the GPU (drop the DLA core)")
        raise PlanError(f"DLA core {core} does not exist: this device has {dla_cores} (0..{dla_cores - 1})")
    if req.precision == "fp32":
        raise PlanError("the DLA runs FP16 or INT8 only: use precision fp16 (GPU fallback keeps unsupported "
                        "layers on the GPU)")
    if req.hardware_compat:
        raise PlanError("hardware-compatible engines target Ampere+ GPUs and cannot use the DLA: drop one of them")
    if v < (11, 0) and req.onnx_kind == "qdq":
        raise PlanError(f"the DLA on {name} does not take explicit quantization (Q/DQ): for INT8 on the DLA "
                        "calibrate the FP32 ONNX with legacy_int8")
    if v >= (11, 0) and req.precision == "int8":
        raise PlanError(f"INT8 on the DLA with {name} is not covered by aspp-deploy yet: use the fp16 ONNX from "
                        f"{QUANTIZE_FP16} on the DLA, or INT8 on the GPU")
    if v >= (11, 0):
        notes.append("DLA on TensorRT 11 needs 11.4.1+ with JetPack 7.2.2+ on Jetson AGX Orin")
    notes.append(f"DLA core {core} with GPU fallback for layers the DLA cannot run")


def _plan_8x(v: Version, req: BuildRequest, notes: list[str]) -> tuple[bool, list[str]]:
    if req.strongly_typed:
        raise PlanError(f"TensorRT {v[0]}.{v[1]} has no strongly typed networks (10.0+): precision comes from "
                        "builder flags here, so leave strongly_typed unset")
    if req.onnx_kind == "fp16":
        notes.append("8.x builds weakly typed: the FP16 flag lets TensorRT choose FP16 kernels; "
                     "the FP32 ONNX with the FP16 flag is the usual 8.x path")
    if req.onnx_kind == "qdq":
        notes.append("explicit quantization: Q/DQ ONNX with the INT8 and FP16 flags")
    if req.legacy_int8:
        notes.append("implicit INT8: FP32 ONNX + INT8 flag + calibrator (the cache is reusable on other devices)")
    return False, _weak_flags(req.precision)


def _plan_10x(req: BuildRequest, notes: list[str]) -> tuple[bool, list[str]]:
    fp16_from_fp32 = req.precision == "fp16" and req.onnx_kind == "fp32"
    weak_needed = req.legacy_int8 or fp16_from_fp32 or req.dla_core is not None
    if req.strongly_typed and weak_needed:
        if req.dla_core is not None:
            raise PlanError("DLA builds on TensorRT 10.x are weakly typed (FP16/INT8 flags): "
                            "leave strongly_typed unset")
        if req.legacy_int8:
            raise PlanError("INT8 calibration needs a weakly typed network: leave strongly_typed unset, or "
                            f"quantize to a Q/DQ ONNX with {QUANTIZE_INT8} and build that strongly typed")
        raise PlanError("a strongly typed build of an FP32 ONNX gives an FP32 engine: for FP16 build the fp16 "
                        f"ONNX from {QUANTIZE_FP16}, or leave strongly_typed unset to use the FP16 flag")
    strongly = not weak_needed if req.strongly_typed is None else req.strongly_typed
    if strongly:
        return True, []
    if req.precision != "fp32":
        alt = QUANTIZE_FP16 if req.precision == "fp16" else QUANTIZE_INT8
        notes.append(f"weakly typed {req.precision.upper()} via builder flags (deprecated from TensorRT 10.12, "
                     f"removed in 11); the strongly typed path builds the ONNX from {alt}")
    if req.legacy_int8:
        notes.append("INT8 calibrators are deprecated since TensorRT 10.1 and removed in 11")
    return False, _weak_flags(req.precision)


def _plan_11x(req: BuildRequest, notes: list[str]) -> tuple[bool, list[str]]:
    if req.strongly_typed is False:
        raise PlanError("TensorRT 11 removed weak typing: every network is strongly typed and precision comes "
                        "from the ONNX; leave strongly_typed unset")
    if req.precision == "fp16" and req.onnx_kind == "fp32":
        raise PlanError("TensorRT 11 has no FP16 builder flag (a strongly typed FP32 ONNX builds an FP32 engine): "
                        f"build the fp16 ONNX from {QUANTIZE_FP16}")
    notes.append("strongly typed: precision comes from the ONNX tensor types")
    return True, []


def lint_profile(version: Version) -> str:
    """The offline pre-flight profile (``aspp-deploy check --trt-version``) that covers a TensorRT version."""
    major, minor = version[0], version[1]
    if major == 8:
        return "8.5" if minor <= 5 else "8.6"
    if major == 10:
        return "10.3" if minor <= 3 else "10.x"
    return "11"
