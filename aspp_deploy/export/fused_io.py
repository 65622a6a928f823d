"""Fused I/O: an ONNX graph pass that moves the host's pixel work into the model (``--fused-io``).

The fused graph takes uint8 ``N x H x W x 3`` pixels in the spec's channel order and returns uint8
class ids ``N x H x W`` at the input size, so the accelerator does the work and the host moves 3
bytes per pixel in and 1 out. It runs on any segmentation graph once it is ONNX (our PyTorch
export, a user's PyTorch model, an imported ONNX or TFLite file), after the other passes:

* in front (``fused_io/in/...``): ``Cast`` uint8 -> float32, then ``Mul`` by ``scale``, ``Sub`` of
  ``mean``, ``Div`` by ``std`` per channel -- the float32 operations of ``Preprocess.normalize`` in its
  order, so the model body gets the input the host would have given it -- and a ``Transpose`` to
  NCHW for an NCHW model. TensorRT wants a uint8 network input to feed a Cast straight away (its
  UINT8 type only converts to and from FP32/FP16), hence the Cast first;
* behind (``fused_io/out/...``): ``ArgMax`` over the classes (a class-id output is taken as it is),
  a nearest resize to the input size when the output is smaller (sampling as the host's ``restore``
  does: source pixel ``floor((i + 0.5) * in / out)``), and ``Cast`` to uint8 through float32 (TensorRT
  8.x converts UINT8 only from FP32/FP16, not from the INT32 its ArgMax gives).

One-channel (sigmoid or logit) models reach this pass already made two-channel by export/import
(``[background, foreground]`` whose argmax is ``probability > threshold``), so the argmax here is
the manifest's threshold rule. The body of the model is untouched (its input and output keep their
names inside the graph), so ``unfuse_io`` gives the unfused graph back, and every node the pass
adds has a name starting with ``FUSED_PREFIX``: the quantizers keep those in float
(``fused_node_names``: exactly those, since a converter may name its own nodes after them). The
input's batch axis stays as it was (dynamic batch keeps working); the height and width must be
fixed, the spec's.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aspp_deploy.errors import InputError
from aspp_deploy.export.graph import count_flops
from aspp_deploy.export.passes import PassReport
from aspp_deploy.runtime.preprocess import Preprocess

FUSED_PREFIX = "fused_io/"
HEAD, TAIL = FUSED_PREFIX + "in/", FUSED_PREFIX + "out/"
# The nodes the pass makes, by name (a converter may add its own nodes named after them: not these).
HEAD_NODES = frozenset(HEAD + n for n in ("to_float", "scale", "mean", "std", "to_nchw"))
TAIL_NODES = frozenset(TAIL + n for n in ("argmax", "ids_to_float", "ids_nchw", "ids_shape", "ids_nc", "sizes",
                                          "resize", "ids_squeeze", "to_uint8"))
PIXELS, CLASS_IDS = "pixels", "class_ids"
MAX_CLASSES = 256  # uint8 class ids
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
INT_TYPES = (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8,
             TensorProto.UINT16)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _unique(model: onnx.ModelProto, wanted: str) -> str:
    taken = {t for n in model.graph.node for t in (*n.input, *n.output)}
    taken |= {v.name for v in (*model.graph.input, *model.graph.output, *model.graph.initializer)}
    name, k = wanted, 1
    while name in taken:
        name, k = f"{wanted}_{k}", k + 1
    return name


def _mine(node: onnx.NodeProto) -> bool:
    return node.name in HEAD_NODES or node.name in TAIL_NODES


def is_fused(model: onnx.ModelProto) -> bool:
    """Whether ``model`` carries this pass's nodes."""
    return any(n.name == HEAD + "to_float" for n in model.graph.node)


def fused_node_names(model: onnx.ModelProto) -> list[str]:
    """The nodes the pass added (to keep in float: they move pixels and class ids, not features)."""
    return [n.name for n in model.graph.node if _mine(n)]


def keep_fused_float(exclude: list[str], model: onnx.ModelProto) -> list[str]:
    """``exclude`` (nodes a quantizer keeps in higher precision) with the fused nodes of ``model`` added:
    its uint8 input and output stay as they are and the pixel normalisation and the argmax are never
    rounded to FP16 or INT8 (an 8-bit grid over the scores would move the argmax; over the pixels, the
    normalisation)."""
    return list(exclude) + [n for n in fused_node_names(model) if n not in exclude]


def _batch_dim(value: onnx.ValueInfoProto) -> int | str:
    dim = value.type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (dim.dim_param or "batch")


def _check_input(model: onnx.ModelProto, pre: Preprocess) -> onnx.ValueInfoProto:
    g = model.graph
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    if len(inputs) != 1 or len(g.output) != 1:
        raise InputError(f"--fused-io: the graph has {len(inputs)} inputs and {len(g.output)} outputs; it fuses one "
                         "image input and one segmentation output")
    inp = inputs[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise InputError(f"--fused-io: input {inp.name} is not float32: the pass puts the uint8 pixels in front of a "
                         "float32 input")
    dims = _dims(inp)
    hw = dims[1:3] if pre.layout == "NHWC" else dims[2:4]
    if len(dims) != 4 or dims[3 if pre.layout == "NHWC" else 1] != 3:
        raise InputError(f"--fused-io: input {inp.name} has shape {dims}, not a {pre.layout} batch of 3-channel images")
    if hw != [pre.height, pre.width]:
        shown = "x".join("?" if not isinstance(d, int) else str(d) for d in hw)
        raise InputError(f"--fused-io needs a fixed input height and width: {inp.name} is {shown} where the spec says "
                         f"{pre.height}x{pre.width} (export or import with --dynamic batch, or without --dynamic, "
                         "so height and width are pinned)")
    return inp


def fuse_io(model: onnx.ModelProto, pre: Preprocess, num_classes: int | None) -> tuple[onnx.ModelProto, PassReport]:
    """``model`` (one float32 image input at ``pre``'s fixed size and layout; one output: N x C x h x w
    scores or N x h x w class ids) with fused I/O (see the module docstring)."""
    if num_classes is not None and num_classes > MAX_CLASSES:
        raise InputError(f"--fused-io returns uint8 class ids: the model has {num_classes} classes, more than "
                         f"{MAX_CLASSES}; export it without --fused-io")
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    nodes0, flops0 = len(fused.graph.node), count_flops(fused)
    inp = _check_input(fused, pre)
    g = fused.graph
    out = g.output[0]
    out_type, out_dims = out.type.tensor_type.elem_type, _dims(out)
    ids = out_type in INT_TYPES
    if ids and len(out_dims) != 3 or not ids and (out_type not in FLOAT_TYPES or len(out_dims) != 4):
        raise InputError(f"--fused-io: output {out.name} ({onnx.helper.tensor_dtype_to_np_dtype(out_type)} "
                         f"{out_dims}) is neither N x C x H x W scores nor N x H x W class ids")
    if not ids and out_dims[1] == 1:
        raise InputError(f"--fused-io: output {out.name} has one score channel; export/import make such a model "
                         "two-channel (background, foreground) before this pass")
    out_hw = out_dims[1:3] if ids else out_dims[2:4]
    if not all(isinstance(d, int) for d in out_hw):
        raise InputError(f"--fused-io: the output's height and width ({out_dims}) are not fixed for a fixed input")
    batch = _batch_dim(inp)
    pixels, class_ids = _unique(fused, PIXELS), _unique(fused, CLASS_IDS)
    consts, head, tail = [], [], []

    def const(name: str, value: np.ndarray) -> str:
        consts.append(numpy_helper.from_array(value, name))
        return name

    # In front: Cast first (TensorRT: a uint8 input feeds a Cast), then Preprocess.normalize's float32 ops.
    nchw = pre.layout == "NCHW"
    normalised = f"{HEAD}normalised" if nchw else inp.name
    head += [helper.make_node("Cast", [pixels], [f"{HEAD}float"], to=TensorProto.FLOAT, name=f"{HEAD}to_float"),
             helper.make_node("Mul", [f"{HEAD}float", const(f"{HEAD}scale_value", np.asarray(pre.scale, np.float32))],
                              [f"{HEAD}scaled"], name=f"{HEAD}scale"),
             helper.make_node("Sub", [f"{HEAD}scaled", const(f"{HEAD}mean_value", np.asarray(pre.mean, np.float32))],
                              [f"{HEAD}centred"], name=f"{HEAD}mean"),
             helper.make_node("Div", [f"{HEAD}centred", const(f"{HEAD}std_value", np.asarray(pre.std, np.float32))],
                              [normalised], name=f"{HEAD}std")]
    if nchw:
        head.append(helper.make_node("Transpose", [normalised], [inp.name], perm=[0, 3, 1, 2], name=f"{HEAD}to_nchw"))

    # Behind: class ids as float32 (exact below 2^24), resized when smaller, then uint8.
    if ids:
        tail.append(helper.make_node("Cast", [out.name], [f"{TAIL}ids_float"], to=TensorProto.FLOAT,
                                     name=f"{TAIL}ids_to_float"))
    else:
        tail += [helper.make_node("ArgMax", [out.name], [f"{TAIL}argmax"], axis=1, keepdims=0, name=f"{TAIL}argmax"),
                 helper.make_node("Cast", [f"{TAIL}argmax"], [f"{TAIL}ids_float"], to=TensorProto.FLOAT,
                                  name=f"{TAIL}ids_to_float")]
    ids_float = f"{TAIL}ids_float"
    resized = list(out_hw) != [pre.height, pre.width]
    if resized:
        tail += _resize_ids(ids_float, f"{TAIL}ids_resized", (pre.height, pre.width), _opset(fused), const)
        ids_float = f"{TAIL}ids_resized"
    tail.append(helper.make_node("Cast", [ids_float], [class_ids], to=TensorProto.UINT8, name=f"{TAIL}to_uint8"))

    g.initializer.extend(consts)
    for k, node in enumerate(head):
        g.node.insert(k, node)
    g.node.extend(tail)
    new_in = helper.make_tensor_value_info(pixels, TensorProto.UINT8, [batch, pre.height, pre.width, 3])
    new_out = helper.make_tensor_value_info(class_ids, TensorProto.UINT8, [batch, pre.height, pre.width])
    index = list(g.input).index(inp)
    g.input.remove(inp)
    g.input.insert(index, new_in)
    del g.output[:]
    g.output.append(new_out)
    details = [f"input {inp.name} (float32 {pre.layout}) -> {pixels} (uint8 NHWC {pre.channel_order}): Cast, "
               f"x{pre.scale:.6g}, -mean, /std" + (", Transpose to NCHW" if nchw else "") + " in the graph",
               f"output {out.name} -> {class_ids} (uint8 class ids at {pre.height}x{pre.width})"
               + ("" if ids else ": ArgMax over the classes") + (f"; nearest resize from {out_hw[0]}x{out_hw[1]}"
                                                                  if resized else "")]
    return fused, PassReport("fused_io", True, nodes0, len(g.node), flops0, count_flops(fused), details)


def _resize_ids(src: str, dst: str, size: tuple[int, int], opset: int, const) -> list[onnx.NodeProto]:
    """N x h x w float class ids -> N x H x W, nearest, sampling as ``Preprocess.restore`` (Pillow's
    nearest: source ``floor((i + 0.5) * h / H)``, which is ONNX's half_pixel + round_prefer_ceil)."""
    if opset < 13:
        raise InputError(f"--fused-io: the output is smaller than the input and the graph's opset {opset} is older "
                         "than 13; re-export it at opset 13 or later")
    axes = const(f"{TAIL}channel_axis", np.asarray([1], np.int64))
    return [
        helper.make_node("Unsqueeze", [src, axes], [f"{TAIL}ids_nchw"], name=f"{TAIL}ids_nchw"),
        helper.make_node("Shape", [f"{TAIL}ids_nchw"], [f"{TAIL}ids_shape"], name=f"{TAIL}ids_shape"),
        helper.make_node("Slice", [f"{TAIL}ids_shape", const(f"{TAIL}zero", np.asarray([0], np.int64)),
                                   const(f"{TAIL}two", np.asarray([2], np.int64))], [f"{TAIL}ids_nc"],
                         name=f"{TAIL}ids_nc"),
        helper.make_node("Concat", [f"{TAIL}ids_nc", const(f"{TAIL}input_hw", np.asarray(size, np.int64))],
                         [f"{TAIL}sizes"], axis=0, name=f"{TAIL}sizes"),
        helper.make_node("Resize", [f"{TAIL}ids_nchw", "", "", f"{TAIL}sizes"], [f"{TAIL}ids_up"], mode="nearest",
                         coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil",
                         name=f"{TAIL}resize"),
        helper.make_node("Squeeze", [f"{TAIL}ids_up", axes], [dst], name=f"{TAIL}ids_squeeze"),
    ]


def unfuse_io(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the pass's nodes: the graph it was fused from, float32 input and scores (or
    class ids) out, under their original names. A graph that is not fused comes back unchanged."""
    if not is_fused(model):
        return model
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    g = plain.graph
    mine = [n for n in g.node if _mine(n)]
    made_by_mine = {o for n in mine for o in n.output}
    others = [n for n in g.node if not _mine(n)]
    read_by_others = {i for n in others for i in n.input}
    body_in = [o for n in mine if n.name in HEAD_NODES for o in n.output if o in read_by_others]
    made_by_others = {o for n in others for o in n.output}
    body_out = [i for n in mine if n.name in TAIL_NODES for i in n.input if i in made_by_others]
    if len(set(body_in)) != 1 or len(set(body_out)) != 1:
        raise InputError("the fused graph's head or tail was changed: its unfused form cannot be recovered; export it "
                         "again")
    pixels = g.input[0]
    batch = _batch_dim(pixels)
    _, h, w, _ = _dims(pixels)
    nchw = any(n.name == HEAD + "to_nchw" for n in mine)
    known = {v.name: v for v in (*g.value_info, *g.output)}
    out_value = known.get(body_out[0])
    keep = others
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [t for t in g.initializer if t.name in used or not t.name.startswith(FUSED_PREFIX)]
    del g.initializer[:]
    g.initializer.extend(inits)
    name = body_in[0]
    if name.startswith(FUSED_PREFIX):  # a converter's cast after the head (FP16): the input gets a plain name
        name = _unique(plain, "normalised_input")
        for node in g.node:
            node.input[:] = [name if i == body_in[0] else i for i in node.input]
    del g.input[0]
    g.input.insert(0, helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                    [batch, 3, h, w] if nchw else [batch, h, w, 3]))
    del g.output[:]
    if out_value is None:
        g.output.append(helper.make_tensor_value_info(body_out[0], TensorProto.FLOAT, None))
        inferred = onnx.shape_inference.infer_shapes(plain)
        out_value = next((v for v in inferred.graph.value_info if v.name == body_out[0]), None)
        del g.output[:]
    if out_value is None:
        raise InputError("the unfused graph's output has no known type or shape: export it again")
    g.output.append(out_value)
    kept_info = [v for v in g.value_info if v.name not in made_by_mine and v.name != body_out[0]]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    return plain
