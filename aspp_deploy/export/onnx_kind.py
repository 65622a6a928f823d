"""What precision an ONNX file holds, read from its graph: the kind a TensorRT build starts from."""

from __future__ import annotations

from typing import Literal

import onnx


def onnx_kind(model: onnx.ModelProto) -> Literal["fp32", "fp16", "qdq"]:
    """What precision an ONNX model holds: 'qdq' (Q/DQ nodes), 'fp16' (fp16 weights) or 'fp32'."""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"
