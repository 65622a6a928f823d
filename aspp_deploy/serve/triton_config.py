"""A Triton Inference Server model repository from the manifest: the TensorRT plan and the ONNX model.

Layout (Triton's): ``<repo>/<model>/config.pbtxt`` and ``<repo>/<model>/1/<file>``. The model files
are placed by the bundle's ``build.sh`` (the plan must be built on the device, by the TensorRT version
the Triton server links against). The configs are protobuf text of Triton's ``ModelConfig``
(``inference.ModelConfig`` in model_config.proto); tests parse them with that schema.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional

from aspp_deploy.errors import InputError

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
                "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "bool": "TYPE_BOOL"}
PLAN_FILE = "model.plan"
ONNX_FILE = "model.onnx"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- protobuf text format: the one serializer of every generated config.pbtxt ---------------------------


class Enum(str):
    """An enum value (``TYPE_FP32``, ``KIND_CPU``): written bare, never quoted."""


def pbtxt_quote(value: str) -> str:
    """``value`` as a protobuf text-format string literal: UTF-8, with backslash, quotes, newlines and
    every non-printable byte escaped, so no value can end the string or add a field."""
    out = []
    for byte in value.encode("utf-8"):
        char = chr(byte)
        if char in ('"', "'", "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


_UNESCAPE = {"n": 10, "r": 13, "t": 9, "a": 7, "b": 8, "f": 12, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}


def pbtxt_unquote(literal: str) -> str:
    """The string a text-format literal (without its quotes) stands for: the inverse of ``pbtxt_quote``."""
    out = bytearray()
    i = 0
    while i < len(literal):
        char = literal[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        nxt = literal[i + 1:i + 2]
        if nxt in _UNESCAPE:
            out.append(_UNESCAPE[nxt])
            i += 2
        elif nxt.isdigit():
            digits = re.match(r"[0-7]{1,3}", literal[i + 1:])
            out.append(int(digits.group(0), 8) & 0xFF if digits else 0)
            i += 1 + (len(digits.group(0)) if digits else 1)
        elif nxt == "x":
            digits = re.match(r"[0-9A-Fa-f]{1,2}", literal[i + 2:])
            out.append(int(digits.group(0), 16) if digits else 0)
            i += 2 + (len(digits.group(0)) if digits else 0)
        else:
            out += nxt.encode("utf-8")
            i += 2
    return out.decode("utf-8", errors="replace")


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        if not IDENT.match(value):
            raise ValueError(f"not an enum value: {value!r}")
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return pbtxt_quote(value)
    raise TypeError(f"no text-format form for {type(value).__name__}")


def _fields(message: Mapping[str, Any], indent: int) -> List[str]:
    pad = "  " * indent
    lines: List[str] = []
    for key, value in message.items():
        if not IDENT.match(key):
            raise ValueError(f"not a field name: {key!r}")
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{key} {{", *_fields(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, (list, tuple)):
            if not value:
                continue
            if all(isinstance(v, Mapping) for v in value):
                lines.append(f"{pad}{key} [")
                for k, item in enumerate(value):
                    lines += [f"{pad}  {{", *_fields(item, indent + 2), f"{pad}  }}" + ("," if k < len(value) - 1 else "")]
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def model_config_text(config: Mapping[str, Any], comment: str = "") -> str:
    """Triton's ``config.pbtxt`` for ``config`` (field -> value: str, int, float, bool, ``Enum``, a
    nested message as a dict, a repeated field as a list; a map as a list of {key, value} messages),
    in protobuf text format with every string escaped (``pbtxt_quote``). Checked against Triton's own
    schema (``ModelConfig`` of model_config.proto, which tritonclient[grpc] ships) when it is installed."""
    head = [f"# {line}" for line in comment.splitlines()]
    text = "\n".join(head + _fields(config, 0)) + "\n"
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return text
    text_format.Parse(text, model_config_pb2.ModelConfig())  # a bug here, never the user's input  # pyright: ignore[reportAttributeAccessIssue]
    return text


def string_parameters(params: Mapping[str, str]) -> List[Dict[str, Any]]:
    """Triton's ``parameters`` map (string values) as ``model_config_text`` takes it."""
    return [{"key": key, "value": {"string_value": value}} for key, value in params.items()]


def _dims(tensor: Mapping[str, Any], dynamic_batch: bool = False) -> List[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in tensor["shape"]]
    if -1 in (dims[1:] if dynamic_batch else dims):
        raise InputError(f"tensor {tensor['name']!r} has shape {tensor['shape']}: the bundle's Triton configs "
                         "are for static shapes (export without --dynamic)")
    return dims


def _tensor(tensor: Mapping[str, Any], kind: str, dynamic_batch: bool = False) -> Dict[str, Any]:
    dtype = str(tensor["dtype"])
    if dtype not in TRITON_TYPES:
        raise InputError(f"{kind} {tensor['name']!r} is {dtype}, which has no Triton data type here")
    return {"name": str(tensor["name"]), "data_type": Enum(TRITON_TYPES[dtype]),
            "dims": _dims(tensor, dynamic_batch)}


def instance_group(kind: str, count: int) -> List[Dict[str, Any]]:
    """An ``instance_group``: ``count`` instances on the CPU or on each GPU."""
    return [{"kind": Enum(f"KIND_{kind.upper()}"), "count": int(count)}]


def warmup_block(entry: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """``model_warmup``: one batch of random input at the network's own shape (batch 1 when it is dynamic)."""
    inputs = [{"key": str(t["name"]), "value": {
        "data_type": Enum(TRITON_TYPES[str(t["dtype"])]),
        "dims": [d if isinstance(d, int) and d > 0 else 1 for d in t["shape"]], "random_data": True}}
        for t in entry["inputs"]]
    return [{"name": "random_input", "batch_size": 1, "inputs": inputs}]


def config_pbtxt(model_name: str, entry: Mapping[str, Any], backend: str, dynamic_batch: bool = False,
                 kind: str = "", count: int = 1, warmup: bool = False,
                 version_policy: Optional[Mapping[str, Any]] = None) -> str:
    """``config.pbtxt`` for ``backend`` "tensorrt" (a plan) or "onnxruntime", with the manifest's tensors.

    The batch dimension is part of ``dims`` and ``max_batch_size`` is 0 (Triton's batcher is not used:
    the segmentation service batches for these models); ``dynamic_batch`` lets that dimension be -1 for
    a model exported with a dynamic batch. ``kind`` "cpu"/"gpu" places the instances (default: the GPU
    for a plan, Triton's choice for ONNX). ``warmup`` runs one random input before the model is ready.
    ``version_policy`` is Triton's message (e.g. ``{"all": {}}``; default: Triton's, the latest version).
    """
    config: Dict[str, Any] = {"name": model_name}
    group: Optional[List[Dict[str, Any]]]
    if backend == "tensorrt":
        config.update(platform="tensorrt_plan", default_model_filename=PLAN_FILE)
        group = instance_group(kind or "gpu", count)
    elif backend == "onnxruntime":
        config.update(backend="onnxruntime", default_model_filename=ONNX_FILE)
        group = instance_group(kind, count) if kind else None
    else:
        raise InputError(f"unknown Triton backend {backend!r}: tensorrt or onnxruntime")
    config.update(max_batch_size=0,
                  input=[_tensor(t, "input", dynamic_batch) for t in entry["inputs"]],
                  output=[_tensor(t, "output", dynamic_batch) for t in entry["outputs"]],
                  instance_group=group, model_warmup=warmup_block(entry) if warmup else None,
                  version_policy=dict(version_policy) if version_policy else None)
    return model_config_text(config, "Generated by `aspp-deploy bundle` from the model manifest.")
