"""Layer groups for the sensitivity analysis: which nodes stay in higher precision together.

Two ways to group, chosen per graph by ``grouping_rule``:

``"names"`` -- our module scheme (the exporter names nodes by module path; torchvision's
DeepLabV3/FCN ResNet exports use the same paths): ``backbone.stem``, one group per residual
block (``backbone.layer3.1``), one per ASPP branch (``aspp.convs.2``; ``convs.0`` is the 1x1
branch, the last one image pooling), ``aspp.project``, and the head convolutions
(``head.classifier.1``, ``head.classifier.4``).

``"structure"`` -- any other graph (``node_12`` or empty names, MobileNet or smp exports whose
scopes do not follow the scheme). The ASPP found by ``aspp_deploy.export.aspp_find`` gives one
group per branch (``aspp.branch0`` ...; a second ASPP is ``aspp2.*``), ``aspp.project`` (the
merge node and the projection conv after it), and ``head`` (everything after). The part before
the ASPP source (``backbone.*``; the whole graph as ``graph.*`` when there is no ASPP) is cut
into blocks where residual Adds close them: a block runs from the node producing the tensor its
shortcut starts from to the Add (``stem``, ``block1``, ``block2`` ...). A stretch that is not
a residual block (the stem, a decoder after the last Add) and holds more than a quarter of the
part's convolution FLOPs is cut further into pieces of about an eighth; without residual Adds the part is cut into up to eight pieces of roughly equal FLOPs
(``part1`` ...). Shape arithmetic and constants belong to no group.

The rule: names are used when (1) every convolution/matrix product has a name that falls into
the scheme (``backbone.*``, ``aspp.*``, ``head.*``), (2) with four or more of them, no name
group holds more than half (a MobileNet backbone is all ``backbone.stem`` by name), and (3)
each ASPP branch found by structure lies in a name group of its own. Otherwise structure.

Groups without a convolution or matrix product are dropped (keeping them would cost nothing).
A node is listed by its name, or ``<op_type>_<position>`` when it has none (as before).

``budget_groups`` is what the budget loop uses: these groups, or one group per convolution /
matrix product (``layer.<node>``, with the elementwise and pooling nodes that follow it up to the
next one) when the groups are few (under ``MIN_GROUPS``) or coarse (one holds more than half the
FLOPs) and the layers are not too many (``MAX_LAYER_GROUPS``: each costs one quantization and one
evaluation in the sensitivity pass).

A MobileNetV3-style graph (no ASPP; inverted residual blocks closed by Adds; squeeze-excitation
as GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid -> Mul; HardSwish as HardSigmoid ->
Mul, or one HardSwish node) is cut by the structure rule into ``graph.stem`` and one
``graph.blockN`` per residual block; an SE block's gating Mul and the HardSwish Muls fall into the
block that holds the convolutions around them, so keeping a block keeps its gating too. A
stretch without a residual Add (a stride-2 block, the decoder, an attention layer's MatMuls
before its Add) is a piece of its own (checked in tests/precision/test_int8_survival.py).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass

import onnx

from aspp_deploy.export.aspp_find import COMPUTE_OPS, AsppMatch, GraphIndex, find_aspp_in
from aspp_deploy.export.graph import initializers, is_static, static_shapes

# Operators whose quantization the budget loop controls (the others only move data).
QUANTIZED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "Concat", "Resize"}
SCHEME_ROOTS = ("backbone", "aspp", "head")
MIN_GROUPS = 4  # fewer groups than this: per-layer sensitivity (when the layers are more)
MAX_LAYER_GROUPS = 48  # more layers than this: groups whatever their size
MAX_PARTS = 8  # pieces of a part without residual blocks
BIG_BLOCK = 4  # a block above 1/BIG_BLOCK of the FLOPs is cut into pieces of 1/MAX_PARTS


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
    shapes = _shapes(model)
    inits = initializers(model)
    index = GraphIndex(model)
    matches = find_aspp_in(index)
    node_flops = {i: _conv_flops(n, shapes, inits) for i, n in enumerate(index.nodes) if n.op_type in COMPUTE_OPS}
    if _names_follow_scheme(index, matches):
        assign = {i: group_of(_node_id(n, i)) for i, n in enumerate(index.nodes)}
    else:
        assign = _structure_groups(index, matches, node_flops)
    nodes: OrderedDict[str, list[str]] = OrderedDict()
    flops: dict[str, int] = {}
    compute: dict[str, bool] = {}
    for i, node in enumerate(index.nodes):
        g = assign.get(i)
        if node.op_type not in QUANTIZED_OPS or g is None:
            continue
        nodes.setdefault(g, []).append(_node_id(node, i))
        compute[g] = compute.get(g, False) or node.op_type in COMPUTE_OPS
        flops[g] = flops.get(g, 0) + node_flops.get(i, 0)
    return [LayerGroup(g, names, flops[g]) for g, names in nodes.items() if compute[g]]


def layer_by_layer(model: onnx.ModelProto) -> list[LayerGroup]:
    """One group per convolution / matrix product (``layer.<node>``), holding the quantized nodes
    after it up to the next one (its activation, an SE gating Mul, a residual Add, a pooling)."""
    shapes = _shapes(model)
    inits = initializers(model)
    index = GraphIndex(model)
    live = {i for i, n in enumerate(index.nodes) if not all(o in index.static for o in n.output)}
    compute = set(_compute_nodes(index))
    out: list[LayerGroup] = []
    pending: list[str] = []  # quantized nodes before the first layer join it
    for i, node in enumerate(index.nodes):
        if i not in live or node.op_type not in QUANTIZED_OPS:
            continue
        name = _node_id(node, i)
        if i in compute:
            out.append(LayerGroup(f"layer.{name}", pending + [name], _conv_flops(node, shapes, inits)))
            pending = []
        elif out:
            out[-1].nodes.append(name)
        else:
            pending.append(name)
    return out


def budget_groups(model: onnx.ModelProto) -> tuple[list[LayerGroup], str]:
    """The groups the budget loop measures and keeps, and their granularity (``"groups"`` or
    ``"layers"``): see the module docstring."""
    groups = layer_groups(model)
    total = sum(g.flops for g in groups)
    coarse = len(groups) < MIN_GROUPS or (total > 0 and max(g.flops for g in groups) * 2 > total)
    if not coarse:
        return groups, "groups"
    layers = layer_by_layer(model)
    if len(groups) < len(layers) <= MAX_LAYER_GROUPS:
        return layers, "layers"
    return groups, "groups"


def grouping_rule(model: onnx.ModelProto) -> str:
    """``"names"`` or ``"structure"``: how ``layer_groups`` groups this graph (see above)."""
    index = GraphIndex(model)
    return "names" if _names_follow_scheme(index, find_aspp_in(index)) else "structure"


def _node_id(node: onnx.NodeProto, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def _shapes(model: onnx.ModelProto) -> dict:
    try:
        return static_shapes(model)
    except Exception:  # strict shape inference refuses some foreign graphs: FLOPs are then 0
        return {}


def _compute_nodes(index: GraphIndex) -> list[int]:
    return [i for i, n in enumerate(index.nodes)
            if n.op_type in COMPUTE_OPS and not all(o in index.static for o in n.output)]


def _names_follow_scheme(index: GraphIndex, matches: list[AsppMatch]) -> bool:
    compute = _compute_nodes(index)
    names = {i: group_of(index.nodes[i].name) if index.nodes[i].name else "" for i in compute}
    if any(g.split(".")[0] not in SCHEME_ROOTS for g in names.values()):
        return False
    if len(compute) >= 4 and max(Counter(names.values()).values()) * 2 > len(compute):
        return False
    for m in matches:
        seen: set[str] = set()
        for b in m.branches:
            groups = {names[i] for i in b.node_indices if i in names}
            if not groups:
                continue
            if len(groups) > 1 or groups & seen:
                return False
            seen |= groups
    return True


def _structure_groups(index: GraphIndex, matches: list[AsppMatch], node_flops: dict[int, int]) -> dict[int, str]:
    live = [i for i, n in enumerate(index.nodes) if not all(o in index.static for o in n.output)]
    weights = _weights(index, node_flops)
    if not matches:
        return _split(index, live, "graph", weights)
    # The main ASPP is the deepest one (the latest source); any other is aspp2, aspp3 ...
    main = max(matches, key=lambda m: index.producer.get(m.source, -1))
    assign: dict[int, str] = {}
    extra = 2
    for m in matches:
        if m is main:
            prefix = "aspp"
        else:
            prefix, extra = f"aspp{extra}", extra + 1
        for k, b in enumerate(m.branches):
            for i in b.node_indices:
                assign[i] = f"{prefix}.branch{k}"
        for i in m.merge_indices + m.project_indices:
            assign[i] = f"{prefix}.project"
    before = _ancestors(index, main.source)
    assign.update(_split(index, [i for i in live if i in before and i not in assign], "backbone", weights))
    for i in live:
        assign.setdefault(i, "head")
    return assign


def _weights(index: GraphIndex, node_flops: dict[int, int]) -> dict[int, int]:
    """How much each conv/matmul weighs when cutting into pieces: FLOPs where the shapes are
    known, else its weight count, else 1."""
    out = {}
    for i in _compute_nodes(index):
        w = node_flops.get(i, 0)
        if not w:
            node = index.nodes[i]
            dims = index.weight_dims.get(node.input[1]) if len(node.input) > 1 else None
            w = math.prod(dims) if dims else 1
        out[i] = max(int(w), 1)
    return out


def _ancestors(index: GraphIndex, tensor: str) -> set[int]:
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        p = index.producer.get(stack.pop())
        if p is None or p in seen:
            continue
        seen.add(p)
        stack.extend(t for t in index.nodes[p].input if t)
    return seen


def _split(index: GraphIndex, order: list[int], prefix: str, weights: dict[int, int]) -> dict[int, str]:
    """Cut ``order`` (node indices in graph order) into blocks; node index -> group name."""
    if not order:
        return {}
    pos = {i: k for k, i in enumerate(order)}
    cuts: set[int] = set()  # cut after these positions
    closers: set[int] = set()  # the residual Adds (a block ending in one is never cut further)
    for i in order:
        ins = index.data_inputs(i)
        if index.nodes[i].op_type not in ("Add", "Sum") or len(ins) < 2:
            continue
        cuts.add(pos[i])
        closers.add(i)
        sources = {index.walk_back(t, {i})[0] for t in ins}
        if len(sources) == 1:  # a residual block: it starts after the node making its input
            start = index.producer.get(sources.pop())
            if start in pos:
                cuts.add(pos[start])
    residual = bool(cuts)
    segments: list[list[int]] = []
    current: list[int] = []
    for k, i in enumerate(order):
        current.append(i)
        if k in cuts:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    total = sum(weights.get(i, 0) for i in order)
    pieces: list[list[int]] = []
    for seg in segments:
        w = sum(weights.get(i, 0) for i in seg)
        convs = sum(1 for i in seg if i in weights)
        if not residual:
            parts = min(MAX_PARTS, convs)
        elif seg[-1] not in closers and convs >= 2 and w * BIG_BLOCK > total:
            parts = min(convs, math.ceil(w * MAX_PARTS / total))
        else:
            parts = 1
        pieces.extend(_chunk(seg, weights, parts) if parts > 1 else [seg])
    # A piece without a conv (a Relu after a residual Add, say) joins the next one, or the last.
    merged: list[list[int]] = []
    carry: list[int] = []
    for piece in pieces:
        carry += piece
        if any(i in weights for i in carry):
            merged.append(carry)
            carry = []
    if carry:
        if merged:
            merged[-1] += carry
        else:
            merged.append(carry)
    if residual:
        names = ["stem"] + [f"block{k}" for k in range(1, len(merged))]
    else:
        names = [f"part{k}" for k in range(1, len(merged) + 1)]
    return {i: f"{prefix}.{name}" for name, piece in zip(names, merged) for i in piece}


def _chunk(seq: list[int], weights: dict[int, int], parts: int) -> list[list[int]]:
    """Cut ``seq`` into ``parts`` runs of about equal weight, each ending at a conv."""
    total = sum(weights.get(i, 0) for i in seq)
    out: list[list[int]] = []
    cur: list[int] = []
    acc, k = 0, 1
    for i in seq:
        cur.append(i)
        if i not in weights:
            continue
        acc += weights[i]
        if k < parts and acc * parts >= total * k:
            out.append(cur)
            cur = []
            while k < parts and acc * parts >= total * k:
                k += 1
    if cur:
        out.append(cur)
    return out


def _conv_flops(node: onnx.NodeProto, shapes: dict, inits: dict) -> int:
    """FLOPs of a Conv (weights known, output shape static) or of a MatMul / Gemm (both input shapes
    static, or the weight known); 0 where they cannot be told."""
    if node.op_type in ("MatMul", "Gemm"):
        return _matmul_flops(node, shapes, inits)
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return 0
    out = shapes.get(node.output[0])
    if not is_static(out) or len(out) != 4:  # type: ignore[arg-type]
        return 0
    macs = 1
    for d in inits[node.input[1]].dims:
        macs *= d
    return 2 * macs * out[0] * out[2] * out[3]  # type: ignore[index, operator]


def _matmul_flops(node: onnx.NodeProto, shapes: dict, inits: dict) -> int:
    def dims(name: str):
        if name in inits:
            return [int(d) for d in inits[name].dims]
        shape = shapes.get(name)
        return list(shape) if is_static(shape) else None  # type: ignore[arg-type]

    if len(node.input) < 2:
        return 0
    a, b = dims(node.input[0]), dims(node.input[1])
    out = shapes.get(node.output[0])
    if a is None or b is None or len(a) < 2 or len(b) < 2 or not is_static(out):  # type: ignore[arg-type]
        return 0
    trans_a = any(x.name == "transA" and x.i for x in node.attribute)
    k = a[-2] if trans_a else a[-1]
    return 2 * k * math.prod(out)  # type: ignore[arg-type]
