"""Layer groups for the sensitivity analysis: which nodes stay in higher precision together.

Groups follow the model's module structure (the exporter names nodes by module path):
``backbone.stem``, one group per residual block (``backbone.layer3.1``), one per ASPP branch
(``aspp.convs.2``; ``convs.0`` is the 1x1 branch, the last one image pooling), ``aspp.project``,
and the head convolutions (``head.classifier.1``, ``head.classifier.4``). Any other graph falls
back to its first two name scopes, so the analysis works on any ONNX, just less tidily.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import onnx

from aspp_deploy.export.graph import initializers, is_static, static_shapes

# Operators whose quantization the budget loop controls (the others only move data).
QUANTIZED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Concat", "Resize"}


def group_of(node_name: str) -> str:
    scopes = [s for s in node_name.split("/") if s][:-1]
    if not scopes:
        return "graph"
    if scopes[0] == "backbone":
        if len(scopes) >= 3 and scopes[1].startswith("layer"):
            return f"backbone.{scopes[2]}"
        return "backbone.stem"
    if scopes[0] == "classifier" and len(scopes) >= 2:
        if scopes[1] == "classifier.0" and len(scopes) >= 3:
            return f"aspp.{scopes[2]}"
        return f"head.{scopes[1]}"
    return ".".join(scopes[:2])


@dataclass
class LayerGroup:
    name: str
    nodes: list[str]
    flops: int  # convolution FLOPs in the group (what keeping it in higher precision costs)

    def to_dict(self) -> dict:
        return {"name": self.name, "nodes": self.nodes, "flops": self.flops}


def layer_groups(model: onnx.ModelProto) -> list[LayerGroup]:
    """Groups in graph order; only groups with at least one convolution or matrix product."""
    shapes = static_shapes(model)
    inits = initializers(model)
    nodes: OrderedDict[str, list[str]] = OrderedDict()
    flops: dict[str, int] = {}
    compute = {}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in QUANTIZED_OPS:
            continue
        name = node.name or f"{node.op_type}_{i}"
        g = group_of(name)
        nodes.setdefault(g, []).append(name)
        compute[g] = compute.get(g, False) or node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
        flops[g] = flops.get(g, 0) + _conv_flops(node, shapes, inits)
    return [LayerGroup(g, names, flops[g]) for g, names in nodes.items() if compute[g]]


def _conv_flops(node: onnx.NodeProto, shapes: dict, inits: dict) -> int:
    if node.op_type != "Conv" or node.input[1] not in inits:
        return 0
    out = shapes.get(node.output[0])
    if not is_static(out):
        return 0
    macs = 1
    for d in inits[node.input[1]].dims:
        macs *= d
    return 2 * macs * out[0] * out[2] * out[3]  # type: ignore[index, operator]
