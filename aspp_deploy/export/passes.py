"""ASPP-aware graph passes on an ONNX model. Each one is exact for the shapes in the graph,
and reports what it removed; the export's parity step checks the result against PyTorch.

1. ``degenerate_atrous``: taps of a dilated conv that only ever read zero padding are
   dropped. Once the rate is >= both feature dimensions a 3x3 atrous conv is exactly a 1x1
   conv with its centre weights (shared/DESIGN.md); with one dimension degenerate it becomes
   a 1x3 or 3x1 conv.
2. ``pool_broadcast``: a Resize of a 1x1 map (the image-pooling branch) is a broadcast, so it
   becomes an Expand to the Resize's output shape.
3. ``argmax``: append ArgMax over the class axis, so the model outputs class ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aspp_deploy.export.graph import (attr, constant_values, count_flops, initializers,
                                      is_static, set_attr, static_shapes)


@dataclass
class PassReport:
    name: str
    applied: bool
    nodes_before: int
    nodes_after: int
    flops_before: int
    flops_after: int
    details: list[str] = field(default_factory=list)
    ops_delta: dict[str, int] = field(default_factory=dict)

    @property
    def nodes_removed(self) -> int:
        return self.nodes_before - self.nodes_after

    @property
    def flops_removed(self) -> int:
        return self.flops_before - self.flops_after

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nodes_removed"], d["flops_removed"] = self.nodes_removed, self.flops_removed
        return d


def _live_taps(k: int, dilation: int, pad_begin: int, size_in: int, size_out: int, stride: int) -> list[int]:
    """Kernel taps along one axis that read real data for at least one output position."""
    live = []
    for i in range(k):
        offset = i * dilation - pad_begin
        lo, hi = offset, (size_out - 1) * stride + offset  # input rows read by outputs 0..n-1
        if hi >= 0 and lo <= size_in - 1:
            # is there an output y with 0 <= y*stride + offset <= size_in-1 ?
            if any(0 <= y * stride + offset <= size_in - 1 for y in range(size_out)):
                live.append(i)
    return live


def degenerate_atrous(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassReport]:
    model = _copy(model)
    nodes0, flops0 = len(model.graph.node), count_flops(model)
    shapes, inits = static_shapes(model), initializers(model)
    details = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        dil = list(attr(node, "dilations", [1, 1]))
        if not (is_static(x) and is_static(y)) or len(dil) != 2 or max(dil) == 1:
            continue
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        kh, kw = w.shape[2:]
        pads = list(attr(node, "pads", [0, 0, 0, 0]))
        strides = list(attr(node, "strides", [1, 1]))
        rows = _live_taps(kh, dil[0], pads[0], x[2], y[2], strides[0])  # type: ignore[index, arg-type]
        cols = _live_taps(kw, dil[1], pads[1], x[3], y[3], strides[1])  # type: ignore[index, arg-type]
        if not rows or not cols or (len(rows) == kh and len(cols) == kw):
            continue
        if rows != list(range(rows[0], rows[-1] + 1)) or cols != list(range(cols[0], cols[-1] + 1)):
            continue  # a hole in the middle cannot be expressed as one smaller conv
        new_w = np.ascontiguousarray(w[:, :, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        nkh, nkw = new_w.shape[2:]
        top, left = pads[0] - rows[0] * dil[0], pads[1] - cols[0] * dil[1]
        # keep the output size: out = in + top + bottom - d*(k-1) for stride 1
        bottom = (y[2] - 1) * strides[0] + dil[0] * (nkh - 1) + 1 - x[2] - top  # type: ignore[index, operator]
        right = (y[3] - 1) * strides[1] + dil[1] * (nkw - 1) + 1 - x[3] - left  # type: ignore[index, operator]
        if min(top, left, bottom, right) < 0:
            continue
        new_dil = [dil[0] if nkh > 1 else 1, dil[1] if nkw > 1 else 1]
        name = f"{node.input[1]}__taps{nkh}x{nkw}"
        model.graph.initializer.append(numpy_helper.from_array(new_w, name))
        node.input[1] = name
        set_attr(node, "kernel_shape", [nkh, nkw])
        set_attr(node, "pads", [top, left, bottom, right])
        set_attr(node, "dilations", new_dil)
        details.append(f"{node.name or node.output[0]}: {kh}x{kw} rate {dil[0]} on a "
                       f"{x[2]}x{x[3]} map -> {nkh}x{nkw}")
    _drop_unused_initializers(model)
    return model, PassReport("degenerate_atrous", bool(details), nodes0, len(model.graph.node),
                             flops0, count_flops(model), details)


def pool_broadcast(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassReport]:
    model = _copy(model)
    nodes0, flops0 = len(model.graph.node), count_flops(model)
    shapes = static_shapes(model)
    consts = constant_values(model)
    details = []
    new_nodes = []
    for node in model.graph.node:
        x = shapes.get(node.input[0]) if node.input else None
        out = shapes.get(node.output[0])
        sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        one_by_one = x is not None and len(x) == 4 and x[2] == 1 and x[3] == 1
        if node.op_type != "Resize" or not one_by_one or attr(node, "axes") is not None \
                or attr(node, "coordinate_transformation_mode", b"half_pixel") == b"tf_crop_and_resize":
            new_nodes.append(node)
            continue
        if sizes:
            shape_input = sizes  # the full output shape, static or computed at run time
        elif is_static(out):
            shape_input = f"{node.output[0]}__shape"
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(out, np.int64), shape_input))
        else:
            new_nodes.append(node)
            continue
        if shape_input in consts and len(numpy_helper.to_array(consts[shape_input])) != 4:
            new_nodes.append(node)
            continue
        new_nodes.append(helper.make_node("Expand", [node.input[0], shape_input], [node.output[0]],
                                          name=f"{node.name or node.output[0]}__broadcast"))
        details.append(f"{node.name or node.output[0]}: Resize of a 1x1 map -> Expand")
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_dead_nodes(model)
    _drop_unused_initializers(model)
    return model, PassReport("pool_broadcast", bool(details), nodes0, len(model.graph.node),
                             flops0, count_flops(model), details)


ARGMAX_DTYPES = {"int32": TensorProto.INT32, "uint8": TensorProto.UINT8}


def append_argmax(model: onnx.ModelProto, dtype: str = "int32",
                  output_name: str = "class_ids") -> tuple[onnx.ModelProto, PassReport]:
    if dtype not in ARGMAX_DTYPES:
        raise ValueError(f"argmax dtype must be one of {sorted(ARGMAX_DTYPES)}")
    model = _copy(model)
    nodes0, flops0 = len(model.graph.node), count_flops(model)
    logits = model.graph.output[0]
    dims = [d for d in logits.type.tensor_type.shape.dim]
    raw = f"{output_name}__int64"
    nodes = [helper.make_node("ArgMax", [logits.name], [raw], axis=1, keepdims=0, name="class_argmax")]
    if dtype == "uint8":  # TensorRT 8.x casts to UINT8 only from FP32/FP16: through float (exact below 2^24)
        nodes.append(helper.make_node("Cast", [raw], [f"{output_name}__float"], to=TensorProto.FLOAT,
                                      name="class_cast_float"))
        raw = f"{output_name}__float"
    nodes.append(helper.make_node("Cast", [raw], [output_name], to=ARGMAX_DTYPES[dtype], name="class_cast"))
    model.graph.node.extend(nodes)
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for i, d in enumerate(dims) if i != 1]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(output_name, ARGMAX_DTYPES[dtype], shape))
    return model, PassReport("argmax", True, nodes0, len(model.graph.node), flops0, count_flops(model),
                             [f"output {logits.name} (logits) -> {output_name} ({dtype} class ids)"])


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def with_ops_delta(before: onnx.ModelProto, after: onnx.ModelProto, report: PassReport) -> PassReport:
    """Record which operator types the pass removed (negative) or added (positive)."""
    a, b = op_counts(before), op_counts(after)
    report.ops_delta = {op: b[op] - a[op] for op in sorted(set(a) | set(b)) if b[op] != a[op]}
    return report


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _drop_dead_nodes(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nothing reads (e.g. the scales/roi feeding a removed Resize)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        alive = [n for n in model.graph.node if any(o in used for o in n.output)]
        if len(alive) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(alive)
