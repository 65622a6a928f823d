"""Offline pre-flight: lint an ONNX graph against the TensorRT ONNX parser's documented
constraints for one TensorRT version, without TensorRT. Sources: onnx-tensorrt's operator
support matrices per release and shared/TENSORRT_NOTES.md.

UINT8 (a fused-I/O model's pixels in and class ids out): TensorRT takes UINT8 network inputs and
outputs from 8.5 (8.5.1 release notes), every version checked here. Its UINT8 type is for I/O only:
a UINT8 tensor may only be converted, by a Cast (8.x: an IIdentityLayer, to and from FP32/FP16 only,
which onnx-tensorrt 8.x asserts; 10.x: an ICastLayer, any type), and no other layer reads one, not
even a Transpose or Reshape (NVIDIA/TensorRT#3985). ``_check_uint8`` says where a graph breaks that;
a graph that keeps it (Cast first, class ids cast to uint8 through float) passes on every version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from aspp_deploy.errors import InputError
from aspp_deploy.export.graph import attr, constant_values, initializers, to_array
from aspp_deploy.io import json_text, sha256_file

# Opset ranges the parser accepts. 8.5/8.6: up to 17. 10.0: 9..20 (onnx-tensorrt operators.md
# for 10.0); later 10.x and 11.x accept more (10.15 and 11.2: 9..24), so "10.x" and "11" use
# the range every release of that line accepts.
OPSET_RANGE = {"8.5": (7, 17), "8.6": (7, 17), "10.3": (9, 20), "10.x": (9, 20), "11": (9, 24)}
TRT_VERSIONS = tuple(OPSET_RANGE)
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORD_REJECTED = {"tf_crop_and_resize", "half_pixel_symmetric"}
# Inputs that must be compile-time constants: (op, input index, minimum opset where it is an input).
CONSTANT_INPUTS = {("ReduceMean", 1, 18), ("ReduceSum", 1, 13), ("ReduceMax", 1, 18),
                   ("Slice", 3, 10), ("Unsqueeze", 1, 13), ("Squeeze", 1, 13)}


@dataclass(frozen=True)
class Finding:
    severity: str  # "error": the parser rejects it; "warning": it parses, with a caveat
    node: str
    op: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.node} ({self.op}): {self.message}"


@dataclass
class CheckReport:
    trt_version: str
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict:
        return {"trt_version": self.trt_version, "ok": self.ok,
                "findings": [asdict(f) for f in self.findings]}

    def summary(self) -> dict:
        """What a manifest entry and the ONNX metadata keep: the verdict and the number of findings
        per severity and operator (the findings themselves are in the sidecar file)."""
        counts: dict[str, dict[str, int]] = {}
        for f in self.findings:
            per_op = counts.setdefault(f.severity, {})
            per_op[f.op] = per_op.get(f.op, 0) + 1
        return {"trt_version": self.trt_version, "ok": self.ok,
                "errors": sum(counts.get("error", {}).values()),
                "warnings": sum(counts.get("warning", {}).values()),
                "counts": {sev: dict(sorted(ops.items())) for sev, ops in sorted(counts.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> "CheckReport":
        """A report from ``to_dict``'s form (a sidecar file, or an entry written before summaries)."""
        return cls(str(data["trt_version"]), [Finding(str(f["severity"]), str(f["node"]), str(f["op"]),
                                                      str(f["message"])) for f in data["findings"]])


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_for_trt(model: onnx.ModelProto, trt_version: str) -> CheckReport:
    if trt_version not in OPSET_RANGE:
        raise ValueError(f"unknown TensorRT version {trt_version!r}; choose one of {', '.join(TRT_VERSIONS)}")
    findings: list[Finding] = []
    opset = _opset(model)
    lo, hi = OPSET_RANGE[trt_version]
    if not lo <= opset <= hi:
        findings.append(Finding("error", "(model)", "opset", f"opset {opset} is outside {lo}..{hi}, "
                                f"the range TensorRT {trt_version}'s parser accepts"))
    consts = constant_values(model)
    inits = initializers(model)
    elem_types = _elem_types(model, consts)
    is_8x = trt_version.startswith("8.")
    for node in model.graph.node:
        name = node.name or (node.output[0] if node.output else "?")
        op = node.op_type
        if op == "Resize":
            mode = _s(attr(node, "mode", b"nearest"))
            coord = _s(attr(node, "coordinate_transformation_mode", b"half_pixel"))
            if mode not in RESIZE_MODES:
                findings.append(Finding("error", name, op, f"mode {mode!r} is not supported (only nearest, linear)"))
            if coord in RESIZE_COORD_REJECTED:
                findings.append(Finding("error", name, op, f"coordinate_transformation_mode {coord!r} is rejected"))
            if attr(node, "antialias", 0):
                findings.append(Finding("error", name, op, "antialias is not supported"))
        for cop, index, since in CONSTANT_INPUTS:
            if op == cop and opset >= since and len(node.input) > index and node.input[index] \
                    and node.input[index] not in consts:
                findings.append(Finding("error", name, op, f"input {index} (axes) must be an initializer or Constant"))
        if op in ("QuantizeLinear", "DequantizeLinear"):
            findings += _check_qdq(node, name, consts, inits)
            findings += _check_qdq_type(node, name, consts, elem_types, is_8x)
        if is_8x and op in ("ArgMax", "ArgMin"):
            findings.append(Finding("warning", name, op, "INT64 output: TensorRT 8.x computes it as INT32 "
                                    "(exact for class ids)"))
    for io in list(model.graph.input) + list(model.graph.output):
        if is_8x and io.type.tensor_type.elem_type == TensorProto.INT64:
            findings.append(Finding("warning", io.name, "I/O", "INT64 network I/O is cast to INT32 on 8.x"))
    findings += _check_uint8(model, elem_types, is_8x)
    return CheckReport(trt_version, findings)


_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16}
_QDQ = ("QuantizeLinear", "DequantizeLinear")  # their uint8 is _check_qdq_type's finding


def _type_name(elem: int | None) -> str:
    return TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else "an unknown type"


def _check_uint8(model: onnx.ModelProto, types: dict[str, int], is_8x: bool) -> list[Finding]:
    """UINT8 tensors where TensorRT can hold them (see the module docstring): read only by Cast layers
    (on 8.x to FP32/FP16), made only by a Cast (on 8.x from FP32/FP16) or given as a network input."""
    out: list[Finding] = []
    g = model.graph
    uint8 = {i.name for i in g.input if i.type.tensor_type.elem_type == TensorProto.UINT8}
    for node in g.node:  # in topological order, as ONNX stores them
        if node.op_type in _QDQ:
            continue
        name = node.name or (node.output[0] if node.output else "?")
        read = [i for i in node.input if i in uint8]
        if node.op_type == "Cast":
            to, source = attr(node, "to"), types.get(node.input[0])
            if to == TensorProto.UINT8:
                uint8.add(node.output[0])
                if is_8x and not read and source is not None and source not in _FLOATS:
                    out.append(Finding("error", name, "Cast", f"casts {_type_name(source)} to UINT8: TensorRT 8.x "
                                       "converts to UINT8 only from FP32/FP16 (cast to float first)"))
            elif read and is_8x and to not in _FLOATS:
                out.append(Finding("error", name, "Cast", f"casts UINT8 to {_type_name(to)}: TensorRT 8.x converts "
                                   "UINT8 only to FP32/FP16"))
            continue
        made = [o for o in node.output if types.get(o) == TensorProto.UINT8]
        uint8.update(made)
        if read:
            out.append(Finding("error", name, node.op_type, f"reads the UINT8 tensor {read[0]}: in TensorRT only a "
                               "Cast may read UINT8 (cast it to float first, even before a Transpose)"))
        elif made:
            out.append(Finding("error", name, node.op_type, f"makes the UINT8 tensor {made[0]}: TensorRT has UINT8 "
                               "only for network I/O and Casts (cast to UINT8 last)"))
    return out


def _check_qdq(node: onnx.NodeProto, name: str, consts: dict, inits: dict) -> list[Finding]:
    out: list[Finding] = []
    op = node.op_type
    scale_name = node.input[1]
    if scale_name not in consts:
        return [Finding("error", name, op, "scale must be a constant")]
    scale = to_array(consts[scale_name])
    if not np.all(scale > 0):
        out.append(Finding("error", name, op, "scales must be positive"))
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in consts:
            out.append(Finding("error", name, op, "zero point must be a constant"))
        elif np.any(to_array(consts[node.input[2]]) != 0):
            out.append(Finding("error", name, op, "zero point must be 0 (symmetric quantization only)"))
    if scale.size > 1:
        data_is_weight = op == "DequantizeLinear" and node.input[0] in inits or \
            op == "QuantizeLinear" and node.input[0] in inits
        if not data_is_weight:
            out.append(Finding("error", name, op, "per-channel scales are only allowed for weights "
                               "(activations must be per-tensor)"))
        elif scale.ndim != 1:
            out.append(Finding("error", name, op, "per-channel scale must be 1-D"))
    return out


# Element types of the quantized side of a Q/DQ pair. The ONNX parser maps Q/DQ onto TensorRT's
# IQuantizeLayer/IDequantizeLayer, whose quantized type is INT8 (FP8/INT4 on later 10.x/11.x for
# other recipes); TensorRT's UINT8 cannot represent quantized values: it exists only for network
# inputs and outputs (onnx-tensorrt operators.md: DequantizeLinear INT8 only; TensorRT DataType
# docs for kUINT8). So a uint8 Q/DQ is refused on every version; 8.x takes int8 only.
_TRT_QUANT_TYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
_TRT8_QUANT_TYPES = {TensorProto.INT8}


def _elem_types(model: onnx.ModelProto, consts: dict) -> dict[str, int]:
    """Tensor name -> ONNX element type, where the graph states it (initializers, Constant outputs,
    graph inputs/outputs, value_info)."""
    types: dict[str, int] = {}
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for tname, tensor in consts.items():
        types[tname] = tensor.data_type
    return types


def _check_qdq_type(node: onnx.NodeProto, name: str, consts: dict, types: dict[str, int],
                    is_8x: bool) -> list[Finding]:
    op = node.op_type
    zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    qtype: int | None = None
    if zp and zp in consts:
        qtype = consts[zp].data_type
    elif op == "QuantizeLinear":
        out_dtype = attr(node, "output_dtype", 0)  # opset 21+
        if out_dtype:
            qtype = int(out_dtype)
        elif not zp:
            # ONNX: no zero point and no output_dtype means uint8, which ONNX Runtime runs as such;
            # TensorRT's quantize layer is int8 (inference: the two would not run the same model).
            return [Finding("warning", name, op, "no zero point: ONNX defines this as a uint8 quantize, "
                            "TensorRT quantizes to int8; give an int8 zero point of 0")]
    else:
        qtype = types.get(node.input[0])
    if op == "QuantizeLinear" and node.output:
        if qtype is not None:
            types[node.output[0]] = qtype
    if qtype is None or qtype in (_TRT8_QUANT_TYPES if is_8x else _TRT_QUANT_TYPES):
        return []
    tname = TensorProto.DataType.Name(qtype).lower() if qtype in TensorProto.DataType.values() else str(qtype)
    return [Finding("error", name, op, f"quantized type {tname} is not one TensorRT quantizes to (use int8; "
                    "TensorRT allows UINT8 only as a network input/output); quantize with int8 zero points")]


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class FindingGroup:
    """One kind of finding (severity, operator, message) with every node and TensorRT version it
    was found on: what ``check`` prints instead of the same lines once per version."""

    severity: str
    op: str
    message: str
    nodes: list[str]
    versions: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def group_findings(reports: list[CheckReport]) -> list[FindingGroup]:
    """Findings of several versions' reports grouped by kind, errors first, otherwise in order of
    appearance; a group lists the versions on which it was found on at least one of its nodes (the
    per-version reports keep the exact pairs)."""
    groups: dict[tuple[str, str, str], FindingGroup] = {}
    for report in reports:
        for f in report.findings:
            g = groups.setdefault((f.severity, f.op, f.message), FindingGroup(f.severity, f.op, f.message, [], []))
            if f.node not in g.nodes:
                g.nodes.append(f.node)
            if report.trt_version not in g.versions:
                g.versions.append(report.trt_version)
    return sorted(groups.values(), key=lambda g: g.severity != "error")


# --- The pre-flight record of an artifact: a summary in its manifest entry and ONNX metadata, every
# finding in a sidecar JSON beside the ONNX (an INT8 file has a warning per Q/DQ node on each version:
# listed in full, they weighed twice the model's weights).

SIDECAR_SUFFIX = ".trt_check.json"
SIDECAR_FORMAT = "aspp-deploy/trt-check/v1"
# The entry's key for the sidecar: {"file": name beside the ONNX, "sha256": its digest}.
SIDECAR_KEY = "trt_check_findings"


def sidecar_name(onnx_name: str) -> str:
    """``model.int8-cpu.onnx`` -> ``model.int8-cpu.trt_check.json``."""
    name = Path(onnx_name).name
    return (name[:-len(".onnx")] if name.endswith(".onnx") else name) + SIDECAR_SUFFIX


@dataclass
class Preflight:
    """Every version's report on one graph: the entry's summary and the sidecar's bytes."""

    onnx_name: str
    reports: list[CheckReport]

    @classmethod
    def run(cls, model: onnx.ModelProto, onnx_name: str, versions: tuple[str, ...] = TRT_VERSIONS) -> "Preflight":
        return cls(Path(onnx_name).name, [check_for_trt(model, v) for v in versions])

    def sidecar_bytes(self) -> bytes:
        return json_text({"format": SIDECAR_FORMAT, "model": self.onnx_name,
                          "reports": [r.to_dict() for r in self.reports],
                          "grouped": [g.to_dict() for g in group_findings(self.reports)]},
                         sort_keys=True).encode("utf-8")

    def entry_fields(self) -> dict:
        """``trt_check`` (version -> summary) and ``SIDECAR_KEY`` for a manifest entry."""
        import hashlib

        return {"trt_check": {r.trt_version: r.summary() for r in self.reports},
                SIDECAR_KEY: {"file": sidecar_name(self.onnx_name),
                              "sha256": hashlib.sha256(self.sidecar_bytes()).hexdigest()}}


def _in_order(checks: dict) -> list[tuple[str, object]]:
    """An entry's ``trt_check`` items oldest version first (a manifest on disk has its keys sorted as text)."""
    rank = {v: i for i, v in enumerate(TRT_VERSIONS)}
    return sorted(checks.items(), key=lambda item: rank.get(item[0], len(rank)))


def version_summaries(entry: dict) -> dict[str, dict]:
    """Version -> summary (``CheckReport.summary``) of an entry's pre-flight, whether it holds summaries
    or, as entries written before them did, every finding."""
    out: dict[str, dict] = {}
    for version, record in _in_order(entry.get("trt_check") or {}):
        if isinstance(record, dict) and isinstance(record.get("findings"), list):
            out[version] = CheckReport.from_dict({**record, "trt_version": version}).summary()
        elif isinstance(record, dict):
            out[version] = record
    return out


def read_findings(onnx_path: Path | str, entry: dict) -> list[CheckReport] | None:
    """Every version's full report for the ONNX at ``onnx_path``: from an old entry's findings list,
    else from its sidecar file (checked against the sha256 its entry recorded); None when the entry
    names no sidecar or the file is not there (a copied model: ``aspp-deploy check`` recomputes it).
    One InputError naming the sidecar when it is there but is not the one the entry recorded."""

    checks = entry.get("trt_check") or {}
    if checks and all(isinstance(c, dict) and isinstance(c.get("findings"), list) for c in checks.values()):
        return [CheckReport.from_dict({**c, "trt_version": v}) for v, c in _in_order(checks)]
    record = entry.get(SIDECAR_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        return None
    path = Path(onnx_path).parent / Path(record["file"]).name
    if not path.is_file():
        return None
    if sha256_file(path) != record.get("sha256"):
        raise InputError(f"{path} (the TensorRT pre-flight findings of {Path(onnx_path).name}) does not match its "
                         "manifest (sha256 differs): delete it, or run `aspp-deploy check "
                         f"{onnx_path} --json FILE` for the findings")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [CheckReport.from_dict(r) for r in data["reports"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a TensorRT pre-flight file ({type(exc).__name__})") from None
