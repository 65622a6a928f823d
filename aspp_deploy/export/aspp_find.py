"""Find ASPP blocks in any ONNX graph by their structure (node names are never read).

An ASPP is one source tensor ``T`` feeding several parallel branches that a merge node joins
again: a ``Concat`` (DeepLab v3/v3+) or a tree of ``Add``/``Sum`` nodes (DeepLab v2).

How a branch is found: from each input of a merge node, walk *backwards* while the current
node has exactly one data input (inputs that are initializers, ``Constant`` outputs or computed
only from constants and ``Shape``/``Size`` are not data: that is how the Shape/Gather/Slice/
Concat side chains feeding a Resize's sizes, or an Expand's shape, are stepped over) and while
the tensor reached is read by nothing outside the chain. The walk stops at the first tensor
that fans out (or a graph input): that tensor is the branch's source. A gate ``x * f(x)``
(SiLU, HardSwish written as Mul, squeeze-excitation) counts as one step from ``x``. Every node
is on at most one such chain, so the search is linear in the graph size.

Branch kinds: ``"atrous"`` (a Conv with dilation > 1), ``"separable-atrous"`` (that Conv is
grouped/depthwise, as in segmentation_models_pytorch's separable ASPP convs), ``"image-pool"``
(GlobalAveragePool/GlobalMaxPool, ReduceMean/ReduceMax over H and W, or an AveragePool/MaxPool
followed by a Resize/Expand/Upsample/Tile back to the map size), ``"1x1"`` (only 1x1 convs),
``"identity"`` (the source itself is merged) and ``"other"``.

The rule: the branches of one merge node that start at the same source form an ASPP when
  * at least two of them are atrous (plain or separable), or
  * exactly one is atrous and at least two more branches are there, all of them 1x1 or image
    pooling (the DeepLab v3 layout once ``degenerate_atrous`` has turned the rates that exceed
    the feature map into 1x1 convs).
So a residual block (a main branch plus a shortcut: two branches) and a U-Net skip Concat
(branches from different sources) are never an ASPP, and neither is an Inception-like block
without dilation. When every atrous conv has become 1x1 (all rates >= the feature map) the
block is no longer recognisable as atrous and is not reported.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import onnx

from aspp_deploy.export.graph import attr, constant_values, to_array

COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SHAPE_OPS = {"Shape", "Size"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE_POOLS = {"ReduceMean", "ReduceMax"}
WINDOW_POOLS = {"AveragePool", "MaxPool"}
UPSAMPLES = {"Resize", "Upsample", "Expand", "Tile"}
MAX_GATE = 16  # longest f(x) chain of a gate x * f(x)
MAX_PROJECT = 16  # how far past the merge the projection conv is looked for


class GraphIndex:
    """Producer/consumer maps over one graph, and which tensors are static (not data)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        self.outputs = {o.name for o in g.output}
        self.weight_dims = {t.name: [int(d) for d in t.dims] for t in g.initializer}
        self.static: set[str] = set(self.weight_dims) | {""}  # "": an optional input left out
        for i, node in enumerate(self.nodes):
            for o in node.output:
                if o:
                    self.producer[o] = i
            seen = set()
            for t in node.input:
                if t and t not in seen:
                    seen.add(t)
                    self.consumers.setdefault(t, []).append(i)
            # Constants, shape arithmetic and anything computed only from them (in graph order,
            # which ONNX requires to be topological).
            if node.op_type in SHAPE_OPS or all(t in self.static for t in node.input):
                self.static.update(o for o in node.output if o)

    def name(self, i: int) -> str:
        """What to call node ``i``: its name, else its first output tensor's name."""
        node = self.nodes[i]
        if node.name:
            return node.name
        out = next((o for o in node.output if o), "")
        return out or f"{node.op_type}_{i}"

    def data_inputs(self, i: int) -> list[str]:
        out: list[str] = []
        for t in self.nodes[i].input:
            if t not in self.static and t not in out:
                out.append(t)
        return out

    def data_consumers(self, tensor: str) -> list[int]:
        """Nodes reading ``tensor`` as data (Shape/Size readers only look at its shape)."""
        return [i for i in self.consumers.get(tensor, []) if self.nodes[i].op_type not in SHAPE_OPS]

    def is_fan_out(self, tensor: str, allowed: set[int]) -> bool:
        """Is ``tensor`` read as data by anything outside ``allowed`` (or a graph output)?"""
        return tensor in self.outputs or any(i not in allowed for i in self.data_consumers(tensor))

    def single_output(self, i: int) -> str | None:
        """The only consumed output of node ``i`` (Dropout's mask, say, is not read)."""
        used = [o for o in self.nodes[i].output if o and (o in self.consumers or o in self.outputs)]
        return used[0] if len(used) == 1 else None

    def walk_back(self, leaf: str, readers: set[int]) -> tuple[str, list[int]]:
        """Walk from ``leaf`` back to the tensor it was computed from by a chain of one-input
        ops; returns (source tensor, chain node indices in graph order). ``readers``: the nodes
        that may read the leaf (the merge node). A tensor read by anything else is the source."""
        chain: list[int] = []
        seen: set[int] = set()
        t = leaf
        while True:
            if self.is_fan_out(t, readers):
                break
            p = self.producer.get(t)
            if p is None or p in seen or self.single_output(p) != t:
                break  # (seen: a malformed, cyclic graph)
            step = self._step_back(p)
            if step is None:
                break
            t, extra = step
            chain.append(p)
            chain.extend(extra)
            seen.add(p)
            seen.update(extra)
            readers = {p, *extra}
        return t, sorted(chain)

    def _step_back(self, p: int) -> tuple[str, list[int]] | None:
        ins = self.data_inputs(p)
        if len(ins) == 1:
            return ins[0], []
        if len(ins) == 2 and self.nodes[p].op_type == "Mul":
            for x, g in (ins, ins[::-1]):
                gate = self._gate(x, g, p)
                if gate is not None:
                    return x, gate
        return None

    def _gate(self, x: str, g: str, mul: int) -> list[int] | None:
        """Nodes of f in ``x * f(x)`` when ``g`` = f(x) is a one-input chain from ``x``."""
        nodes: list[int] = []
        reader = {mul}
        t = g
        for _ in range(MAX_GATE):
            if self.is_fan_out(t, reader):
                return None
            q = self.producer.get(t)
            if q is None or self.single_output(q) != t:
                return None
            ins = self.data_inputs(q)
            if len(ins) != 1:
                return None
            nodes.append(q)
            reader = {q}
            if ins[0] == x:
                return nodes
            t = ins[0]
        return None


@dataclass
class AsppBranch:
    kind: str  # "1x1", "atrous", "separable-atrous", "image-pool", "identity" or "other"
    rates: list[int]  # dilation of each dilated conv in the branch (the larger of H and W)
    convs: list[str]  # the branch's Conv/Gemm/MatMul node names (output tensor names if unnamed)
    nodes: list[str]  # every node of the branch, in graph order
    output: str  # the tensor the merge node reads
    node_indices: list[int] = field(default_factory=list, repr=False)  # positions in graph.node

    def to_dict(self) -> dict:
        return {"kind": self.kind, "rates": self.rates, "convs": self.convs, "nodes": self.nodes,
                "output": self.output}


@dataclass
class AsppMatch:
    source: str  # the tensor every branch starts from
    source_node: str | None  # the node producing it (None: a graph input)
    merge_node: str  # the Concat, or the root of the Add/Sum tree
    merge_op: str
    merge_nodes: list[str]  # every node of the merge (several for an Add tree)
    branches: list[AsppBranch]
    project: list[str]  # nodes after the merge up to the projection conv (empty: none)
    rates: list[int] = field(default_factory=list)
    has_image_pool: bool = False
    merge_indices: list[int] = field(default_factory=list, repr=False)
    project_indices: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.rates:
            self.rates = [r for b in self.branches for r in b.rates]
        self.has_image_pool = self.has_image_pool or any(b.kind == "image-pool" for b in self.branches)

    def describe(self) -> str:
        kinds = [b.kind for b in self.branches]
        parts = []
        if kinds.count("1x1"):
            parts.append("1x1" if kinds.count("1x1") == 1 else f"{kinds.count('1x1')}x 1x1")
        for kind, label in (("atrous", "atrous"), ("separable-atrous", "separable atrous")):
            rates = [r for b in self.branches if b.kind == kind for r in b.rates]
            if rates:
                parts.append(f"{label} " + ", ".join(f"r{r}" for r in rates))
        if self.has_image_pool:
            n = kinds.count("image-pool")
            parts.append("image pool" if n == 1 else f"{n}x image pool")
        for kind in ("identity", "other"):
            if kinds.count(kind):
                parts.append(f"{kinds.count(kind)} {kind}")
        tree = f" (a tree of {len(self.merge_nodes)} {self.merge_op}s)" if len(self.merge_nodes) > 1 else ""
        return f"ASPP at {self.source}: {' + '.join(parts)}, merged by {self.merge_op} {self.merge_node}{tree}"

    def to_dict(self) -> dict:
        return {"source": self.source, "source_node": self.source_node, "merge_node": self.merge_node,
                "merge_op": self.merge_op, "merge_nodes": self.merge_nodes,
                "branches": [b.to_dict() for b in self.branches], "project": self.project,
                "rates": self.rates, "has_image_pool": self.has_image_pool, "describe": self.describe()}


def find_aspp(model: onnx.ModelProto) -> list[AsppMatch]:
    """Every ASPP block of ``model``, in graph order of their merge nodes."""
    return find_aspp_in(GraphIndex(model))


def find_aspp_in(index: GraphIndex) -> list[AsppMatch]:
    consts: dict[str, onnx.TensorProto] | None = None
    matches = []
    for i, node in enumerate(index.nodes):
        merge = _merge_inputs(index, i)
        if merge is None:
            continue
        leaves, merge_nodes = merge
        by_source: OrderedDict[str, list[tuple[str, list[int]]]] = OrderedDict()
        for leaf in leaves:
            source, chain = index.walk_back(leaf, merge_nodes)
            by_source.setdefault(source, []).append((leaf, chain))
        source, branches = max(by_source.items(), key=lambda kv: sum(1 for _, c in kv[1] if c))
        if consts is None:
            consts = constant_values(index.model)
        found = [_branch(index, leaf, chain, consts) for leaf, chain in branches]
        if not _is_aspp([b.kind for b in found]):
            continue
        project = _project(index, index.nodes[i].output[0])
        src_node = index.producer.get(source)
        matches.append(AsppMatch(
            source=source, source_node=None if src_node is None else index.name(src_node),
            merge_node=index.name(i), merge_op=node.op_type,
            merge_nodes=[index.name(j) for j in sorted(merge_nodes)], branches=found,
            project=[index.name(j) for j in project], merge_indices=sorted(merge_nodes),
            project_indices=project))
    return matches


def _is_aspp(kinds: list[str]) -> bool:
    atrous = sum(1 for k in kinds if k in ("atrous", "separable-atrous"))
    rest = [k for k in kinds if k not in ("atrous", "separable-atrous", "identity")]
    if atrous >= 2:
        return True
    return atrous == 1 and len(rest) >= 2 and all(k in ("1x1", "image-pool") for k in rest)


def _merge_inputs(index: GraphIndex, i: int) -> tuple[list[str], set[int]] | None:
    """(merged tensors in order, merge node indices) if node ``i`` merges parallel branches."""
    node = index.nodes[i]
    out = index.single_output(i)
    if node.op_type not in ("Concat", "Add", "Sum") or out is None or out in index.static:
        return None
    ins = index.data_inputs(i)
    if len(ins) < 2:
        return None
    if node.op_type == "Concat":
        return ins, {i}
    if _inner_of_tree(index, out):
        return None  # part of a bigger Add/Sum tree: its root collects it
    leaves: list[str] = []
    tree = {i}
    stack = list(reversed(ins))
    while stack:
        t = stack.pop()
        p = index.producer.get(t)
        if p is not None and p not in tree and _inner_of_tree(index, t):
            tree.add(p)
            stack.extend(reversed(index.data_inputs(p)))
        else:
            leaves.append(t)
    return leaves, tree


def _inner_of_tree(index: GraphIndex, tensor: str) -> bool:
    """``tensor`` is an Add/Sum of data tensors read only by another such Add/Sum."""
    p = index.producer.get(tensor)
    if p is None or index.nodes[p].op_type not in ("Add", "Sum") or len(index.data_inputs(p)) < 2:
        return False
    readers = index.data_consumers(tensor)
    return tensor not in index.outputs and len(readers) == 1 and \
        index.nodes[readers[0]].op_type in ("Add", "Sum") and len(index.data_inputs(readers[0])) >= 2


def _conv_info(index: GraphIndex, i: int) -> tuple[int, int, list[int] | None]:
    """(dilation, group, kernel) of a Conv node; kernel None when unknown."""
    node = index.nodes[i]
    dil = list(attr(node, "dilations", []) or [1])
    group = int(attr(node, "group", 1) or 1)
    kernel = attr(node, "kernel_shape")
    if kernel is None and len(node.input) > 1:
        w = index.weight_dims.get(node.input[1])
        kernel = w[2:] if w is not None else None
    return max(int(d) for d in dil), group, None if kernel is None else [int(k) for k in kernel]


def _is_global_pool(index: GraphIndex, i: int, consts: dict[str, onnx.TensorProto]) -> bool:
    node = index.nodes[i]
    if node.op_type in GLOBAL_POOLS:
        return True
    if node.op_type in REDUCE_POOLS:
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in consts:
                return True  # computed axes: assume the spatial ones
            axes = [int(a) for a in to_array(consts[node.input[1]]).reshape(-1)]
        if axes is None:
            return True  # no axes: every axis, the spatial ones included
        return {2, 3} <= set(axes) or {-2, -1} <= set(axes)
    return False


def _branch(index: GraphIndex, leaf: str, chain: list[int],
            consts: dict[str, onnx.TensorProto]) -> AsppBranch:
    rates: list[int] = []
    convs: list[str] = []
    grouped_atrous = False
    only_1x1 = True
    has_conv = False
    pooled = False
    window_pool_at: int | None = None
    upsampled = False
    for pos, i in enumerate(chain):
        op = index.nodes[i].op_type
        if op in COMPUTE_OPS:
            has_conv = True
            convs.append(index.name(i))
            if op != "Conv":
                only_1x1 = only_1x1 and op in ("Gemm", "MatMul")
                continue
            dil, group, kernel = _conv_info(index, i)
            if dil > 1 and (kernel is None or any(k > 1 for k in kernel)):
                rates.append(dil)
                grouped_atrous = grouped_atrous or group > 1
            if kernel is None or any(k != 1 for k in kernel):
                only_1x1 = False
        elif _is_global_pool(index, i, consts):
            pooled = True
        elif op in WINDOW_POOLS:
            window_pool_at = pos if window_pool_at is None else window_pool_at
        elif op in UPSAMPLES and window_pool_at is not None and pos > window_pool_at:
            upsampled = True
    if not chain:
        kind = "identity"
    elif pooled or upsampled:
        kind = "image-pool"
    elif rates:
        kind = "separable-atrous" if grouped_atrous else "atrous"
    elif has_conv and only_1x1:
        kind = "1x1"
    else:
        kind = "other"
    return AsppBranch(kind, rates, convs, [index.name(i) for i in chain], leaf, list(chain))


def _project(index: GraphIndex, merged: str) -> list[int]:
    """Nodes from the merge output up to and including the first conv, if it is reached by a
    chain of one-input nodes; empty otherwise."""
    nodes: list[int] = []
    t = merged
    for _ in range(MAX_PROJECT):
        readers = index.data_consumers(t)
        if len(readers) != 1 or t in index.outputs:
            return []
        n = readers[0]
        out = index.single_output(n)
        if len(index.data_inputs(n)) != 1 or out is None:
            return []
        nodes.append(n)
        if index.nodes[n].op_type in COMPUTE_OPS:
            return nodes
        t = out
    return []
