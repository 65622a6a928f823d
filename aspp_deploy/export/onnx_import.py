"""``aspp-deploy import``: adopt a segmentation ONNX made elsewhere.

The same steps as an export (``onnx_export.finish_graph``): onnx.checker, onnxsim, ASPP detection
by graph structure, the exact passes, the offline TensorRT check and the manifest every later command
reads; parity is measured against the original file in ONNX Runtime. What the graph shows (input
layout and size, dynamic axes, class count, output kind and layout) is read from it; the rest comes
from the spec, or is assumed and said; a shape that allows two readings stops the command and names
the flag. Adaptations, each recorded, after which every adopted graph returns one NCHW map at the
input size: a uint8 image input takes float pixels (rounded and cast in the graph); extra outputs
are dropped (the first is the segmentation map); an NHWC output is transposed; a class-id channel
axis is squeezed; one score channel (sigmoid probability or logit) becomes two, background and
foreground, whose argmax is ``probability > threshold``; a low-resolution output is upsampled to
the input size (Resize, linear with half_pixel = ``align_corners=False``; nearest, asymmetric, for
class ids: output pixel i takes source cell floor(i / stride), as PyTorch's nearest does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aspp_deploy.backends.onnxruntime_backend import ort_session
from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.export.graph import load_onnx
from aspp_deploy.export.onnx_export import (describe_parity, ExportOptions, ExportResult, finish_graph,
                                            fingerprinted_spec, manifest_entry, MIN_SIDE, ort_session_from_model,
                                            parity_inputs, require_parity,
                                            resolved_notes, run_parity, validate_options, verification_shapes,
                                            write_artifact)
from aspp_deploy.export.parity import compare_outputs, ParityReport
from aspp_deploy.io import ensure_writable, fingerprint, sha256_file
from aspp_deploy.spec import GraphFacts, ModelSpec, read_output_layout, resolve, resolve_input

INPUT_TYPES = (TensorProto.FLOAT, TensorProto.UINT8)
TFLITE_MIN_AGREEMENT = 0.999  # masks of the converted graph vs the TFLite runtime's, per case
# ops a sigmoid output may pass through on its way out and still be a probability
PASS_THROUGH = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Resize", "Cast", "Flatten"}


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim]


def _layout(dims: list[int | str], said: str | None) -> str:
    nchw, nhwc = dims[1] == 3, dims[3] == 3
    if said:
        if (said == "NCHW" and not nchw and isinstance(dims[1], int)) or \
                (said == "NHWC" and not nhwc and isinstance(dims[3], int)):
            raise InputError(f"the spec contradicts the model: layout {said} given, the input is {dims}")
        return said
    if nchw and not nhwc:
        return "NCHW"
    if nhwc and not nchw:
        return "NHWC"
    if nchw and nhwc:
        raise InputError(f"input {dims} could be NCHW or NHWC: give --layout or the spec's layout")
    raise InputError(f"input {dims} has no 3-channel axis: an RGB image model takes N x 3 x H x W or N x H x W x 3")


def _session(model: onnx.ModelProto):
    return ort_session_from_model(model, ort_session)


def _upsample(model: onnx.ModelProto, layout: str, ids: bool, opset: int) -> None:
    """Resize the first output to the input's spatial size, inside the graph (the output keeps its name)."""
    if opset < 11:
        raise InputError(f"the model's output is smaller than its input and its opset {opset} is older than 11: "
                         "re-export it at opset 11 or later so it can be upsampled in the graph")
    g = model.graph
    out = g.output[0]
    low, _ = _rename_output(model, "lowres")
    spatial = [1, 2] if layout == "NHWC" else [2, 3]
    inp = g.input[0].name
    p = f"{out.name}__up"
    g.initializer.extend([numpy_helper.from_array(np.asarray(spatial, np.int64), f"{p}_hw_idx"),
                          numpy_helper.from_array(np.asarray([0], np.int64), f"{p}_zero"),
                          numpy_helper.from_array(np.asarray([2 if not ids else 1], np.int64), f"{p}_lead")])
    nodes = [helper.make_node("Shape", [inp], [f"{p}_in_shape"], name=f"{p}_in_shape"),
             helper.make_node("Gather", [f"{p}_in_shape", f"{p}_hw_idx"], [f"{p}_hw"], axis=0, name=f"{p}_hw"),
             helper.make_node("Shape", [low], [f"{p}_out_shape"], name=f"{p}_out_shape"),
             helper.make_node("Slice", [f"{p}_out_shape", f"{p}_zero", f"{p}_lead", f"{p}_zero"], [f"{p}_nc"],
                              name=f"{p}_nc"),
             helper.make_node("Concat", [f"{p}_nc", f"{p}_hw"], [f"{p}_sizes"], axis=0, name=f"{p}_sizes")]
    if ids:
        dtype = out.type.tensor_type.elem_type
        nodes += [helper.make_node("Cast", [low], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_to_float"),
                  helper.make_node("Resize", [f"{p}_f", "", "", f"{p}_sizes"], [f"{p}_r"], mode="nearest",
                                   coordinate_transformation_mode="asymmetric", nearest_mode="floor",
                                   name=f"{p}_resize"),
                  helper.make_node("Cast", [f"{p}_r"], [out.name], to=dtype, name=f"{p}_to_ids")]
    else:
        nodes.append(helper.make_node("Resize", [low, "", "", f"{p}_sizes"], [out.name], mode="linear",
                                      coordinate_transformation_mode="half_pixel", name=f"{p}_resize"))
    g.node.extend(nodes)


def _rename_output(model: onnx.ModelProto, suffix: str) -> tuple[str, str]:
    """Point the first output's producer (and readers) at a new internal name; returns (internal, output)."""
    out = model.graph.output[0]
    inner = f"{out.name}__{suffix}"
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == out.name:
                node.output[i] = inner
        for i, name in enumerate(node.input):
            if name == out.name:
                node.input[i] = inner
    return inner, out.name


def _float_input(model: onnx.ModelProto) -> None:
    """A uint8 image input becomes a float32 one, clipped to 0..255, rounded and cast in the graph."""
    g = model.graph
    inp = next(i for i in g.input if i.name not in {t.name for t in g.initializer})
    raw = f"{inp.name}__uint8"
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == inp.name:
                node.input[i] = raw
    p = f"{inp.name}__in"
    g.initializer.extend([numpy_helper.from_array(np.asarray(0, np.float32), f"{p}_lo"),
                          numpy_helper.from_array(np.asarray(255, np.float32), f"{p}_hi")])
    nodes = [helper.make_node("Clip", [inp.name, f"{p}_lo", f"{p}_hi"], [f"{p}_clip"], name=f"{p}_clip"),
             helper.make_node("Round", [f"{p}_clip"], [f"{p}_round"], name=f"{p}_round"),
             helper.make_node("Cast", [f"{p}_round"], [raw], to=TensorProto.UINT8, name=f"{p}_to_uint8")]
    for k, node in enumerate(nodes):
        g.node.insert(k, node)
    inp.type.tensor_type.elem_type = TensorProto.FLOAT


def _squeeze_ids(model: onnx.ModelProto, axis: int) -> None:
    inner, name = _rename_output(model, "with_channel")
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.asarray([axis], np.int64), f"{name}__squeeze_axes"))
    g.node.append(helper.make_node("Squeeze", [inner, f"{name}__squeeze_axes"], [name], name=f"{name}__squeeze"))
    del g.output[0].type.tensor_type.shape.dim[axis]


def _to_nchw(model: onnx.ModelProto) -> None:
    inner, name = _rename_output(model, "nhwc")
    model.graph.node.append(helper.make_node("Transpose", [inner], [name], perm=[0, 3, 1, 2], name=f"{name}__to_nchw"))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        copies = [onnx.TensorShapeProto.Dimension() for _ in range(4)]
        for k, src in enumerate((0, 3, 1, 2)):
            copies[k].CopyFrom(dims[src])
        del dims[:]
        dims.extend(copies)


def _binary(model: onnx.ModelProto, kind: str, threshold: float) -> None:
    """One score channel -> [background, foreground] whose argmax is ``probability > threshold``:
    probabilities p -> [2t - p, p] (= [1 - p, p] at t = 0.5); logits z -> [logit(t), z], true logits
    (their softmax is sigmoid(z - logit(t)))."""
    inner, name = _rename_output(model, "one_channel")
    g = model.graph
    p = f"{name}__binary"
    if kind == "probabilities":
        g.initializer.append(numpy_helper.from_array(np.asarray(2 * threshold, np.float32), f"{p}_2t"))
        nodes = [helper.make_node("Sub", [f"{p}_2t", inner], [f"{p}_bg"], name=f"{p}_background")]
    else:
        g.initializer.append(numpy_helper.from_array(
            np.full((1, 1, 1, 1), np.log(threshold / (1 - threshold)), np.float32), f"{p}_c"))
        nodes = [helper.make_node("Shape", [inner], [f"{p}_shape"], name=f"{p}_shape"),
                 helper.make_node("Expand", [f"{p}_c", f"{p}_shape"], [f"{p}_bg"], name=f"{p}_background")]
    nodes.append(helper.make_node("Concat", [f"{p}_bg", inner], [name], axis=1, name=f"{p}_concat"))
    g.node.extend(nodes)
    dims = g.output[0].type.tensor_type.shape.dim
    if len(dims) == 4:
        dims[1].Clear()
        dims[1].dim_value = 2


def _binary_np(y: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    if kind == "probabilities":
        bg = np.float32(2 * threshold) - y
    else:
        bg = np.full_like(y, np.float32(np.log(threshold / (1 - threshold))))
    return np.concatenate([bg, y], axis=1)


def _sigmoid_output(model: onnx.ModelProto) -> bool:
    """Does the first output come from a Sigmoid (through layout-only ops)?"""
    producer = {o: n for n in model.graph.node for o in n.output}
    name = model.graph.output[0].name
    for _ in range(16):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in ("Sigmoid", "HardSigmoid"):
            return True
        if node.op_type not in PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return False


def _torch_upsample(y: np.ndarray, size: tuple[int, int], ids: bool) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(y))
    if ids:
        lead = t.dim() == 3
        r = F.interpolate((t[:, None] if lead else t).float(), size=size, mode="nearest")
        return (r[:, 0] if lead else r).to(t.dtype).numpy()
    return F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False).numpy()


def _one_channel_kind(y: np.ndarray, from_sigmoid: bool, said: str | None) -> str:
    """Probabilities (a sigmoid's output) or logits, for a one-channel score map."""
    if said == "class_ids":
        raise InputError("the spec contradicts the model: output class_ids given, the model returns float scores")
    if said:
        if said == "logits" and from_sigmoid:
            raise InputError("the spec contradicts the model: output logits given, the output comes from a Sigmoid")
        return said
    if from_sigmoid:
        return "probabilities"
    if float(y.min()) < 0 or float(y.max()) > 1:
        return "logits"
    raise InputError("the model has one score channel whose values all lie in 0..1 and no Sigmoid at its end: give "
                     "--output-kind probabilities (a sigmoid output) or logits")


def _pick_output(model: onnx.ModelProto, name: str, path: Path) -> None:
    """Make output ``name`` the first (the segmentation map); the others are dropped after."""
    names = [o.name for o in model.graph.output]
    if name not in names:
        raise InputError(f"--output-name {name}: {path.name} has no such output (its outputs: {', '.join(names)})")
    k = names.index(name)
    if k:
        chosen = onnx.ValueInfoProto()
        chosen.CopyFrom(model.graph.output[k])
        del model.graph.output[k]
        model.graph.output.insert(0, chosen)


def _load_original(path: Path) -> tuple[onnx.ModelProto, str]:
    """The model as ONNX, and what it was: an ONNX file, or a TFLite file converted here."""
    if path.suffix.lower() == ".tflite":
        from aspp_deploy.export.tflite_import import tflite_to_onnx

        if not path.is_file():
            raise InputError(f"model not found: {path}")
        return tflite_to_onnx(path), "tflite"
    return load_onnx(path), "onnx"


def _tflite_check(path: Path, original: onnx.ModelProto, output_index: int, post: Callable[[np.ndarray], np.ndarray],
                  cases: list[tuple[str, np.ndarray]], ids: bool, log: Callable[[str], None]) -> dict:
    """The converted graph against the TFLite file run by a real TFLite runtime (LiteRT), on the parity
    inputs, read through the same output adaptations; refuses a conversion that disagrees."""
    try:
        from aspp_deploy.export.tflite_import import tflite_reference

        run_tflite = tflite_reference(path)
    except MissingDependencyError as exc:
        log(f"note: not checked against a TFLite runtime ({exc})")
        return {"checked": False, "why": str(exc)}
    session = _session(original)
    name = session.get_inputs()[0].name
    results = []
    for case, arr in cases:
        ours = post(session.run(None, {name: arr})[0])
        theirs = post(np.asarray(run_tflite(arr)[output_index]))
        results.append(compare_outputs(case, theirs, ours, reference_ids=ids))
    # Another runtime (XNNPACK kernels, its own summation order): the masks decide, the scores are reported
    report = ParityReport(results, max_rel_tol=float("inf"), min_agreement=TFLITE_MIN_AGREEMENT)
    log(f"against the TFLite runtime: argmax agreement {report.argmax_agreement:.6f}, max abs {report.max_abs:.2e} "
        f"({report.max_rel:.1e} of the output's scale) over {len(results)} case(s)")
    if not report.ok:
        raise InputError(f"the ONNX converted from {path.name} disagrees with the TFLite runtime: argmax agreement "
                         f"{report.argmax_agreement:.6f}, max abs {report.max_abs:.3g}; nothing written")
    return {"checked": True, "runtime": "ai-edge-litert", **report.to_dict()}


def onnx_from_foreign(path: Path, spec: ModelSpec, out_dir: Path, opts: ExportOptions,
                      images: list[Path] | None = None,
                      log: Callable[[str], None] = lambda m: None, output_name: str | None = None) -> ExportResult:
    t0 = time.perf_counter()
    path = Path(path)
    spec = spec.merged(height=opts.height, width=opts.width)
    original, source_kind = _load_original(path)
    output_index = 0  # of the segmentation map, in the file's own output order
    if output_name is not None:
        _pick_output(original, output_name, path)
        output_index = [o.name for o in _load_original(path)[0].graph.output].index(output_name) \
            if source_kind == "tflite" else 0
    original_sha = sha256_file(path)
    try:
        onnx.checker.check_model(original, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise InputError(f"{path} is not a valid ONNX model: {str(exc).strip().splitlines()[0][:300]}") from None
    opset = next((o.version for o in original.opset_import if o.domain in ("", "ai.onnx")), 0)
    g = original.graph
    weights = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights]
    if len(inputs) != 1:
        raise InputError(f"{path.name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): "
                         "a segmentation model takes one image tensor")
    if not g.output:
        raise InputError(f"{path.name} has no outputs")
    inp = inputs[0]
    input_type = inp.type.tensor_type.elem_type
    if input_type not in INPUT_TYPES:
        raise InputError(f"input {inp.name} is {onnx.helper.tensor_dtype_to_np_dtype(input_type)}:"
                         " only float32 and uint8 image inputs are supported")
    uint8_input = input_type == TensorProto.UINT8
    dims = _dims(inp)
    if len(dims) != 4:
        raise InputError(f"input {inp.name} has shape {dims}: an image model takes a 4-D batch")
    layout = _layout(dims, spec.layout)
    hi, wi = (1, 2) if layout == "NHWC" else (2, 3)
    dynamic = (["batch"] if not isinstance(dims[0], int) else []) + \
              (["spatial"] if not (isinstance(dims[hi], int) and isinstance(dims[wi], int)) else [])
    facts = GraphFacts(height=dims[hi] if isinstance(dims[hi], int) else None,
                       width=dims[wi] if isinstance(dims[wi], int) else None, layout=layout, dynamic=dynamic)
    notes: list[str] = []
    model = onnx.ModelProto()
    model.CopyFrom(original)
    if uint8_input:
        _float_input(model)
        notes.append(f"input {inp.name} is uint8: the graph takes float32 pixels and rounds them to uint8 itself")
        said = spec.given()
        if not {"scale", "mean", "std"} & set(said):
            spec = spec.merged(scale=1.0, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
            notes.append("uint8 input: pixels are fed as 0..255 (scale 1, mean 0, std 1); the model normalises them")
    if spec.dynamic is not None and set(spec.dynamic) != set(dynamic):
        extra = set(spec.dynamic) - set(dynamic)
        if extra:
            raise InputError(f"the spec contradicts the model: dynamic {sorted(spec.dynamic)} given, but the graph's "
                             f"{', '.join(sorted(extra))} axes are static ({dims})")
        pinned = resolve_input(spec, facts)[0]
        new = list(dims)
        if "batch" not in spec.dynamic and "batch" in dynamic:
            new[0] = max(opts.batch, 1)
        if "spatial" not in spec.dynamic and "spatial" in dynamic:
            new[hi], new[wi] = pinned.height, pinned.width
        from aspp_deploy.export.onnx_export import set_io_shape

        set_io_shape(next(i for i in model.graph.input if i.name == inp.name), new)
        notes.append(f"input {inp.name} pinned from {dims} to the static {new}")
        dims = new
        dynamic = sorted(spec.dynamic)
        facts = GraphFacts(height=dims[hi] if isinstance(dims[hi], int) else None,
                           width=dims[wi] if isinstance(dims[wi], int) else None, layout=layout, dynamic=dynamic)
    if opts.fused_io and "spatial" in dynamic:
        raise InputError(f"--fused-io needs a fixed input height and width: input {inp.name} of {path.name} is {dims}; "
                         "pin them with --dynamic batch (or --dynamic '') and the spec's --height/--width")
    if len(model.graph.output) > 1:
        dropped = [o.name for o in model.graph.output[1:]]
        del model.graph.output[1:]
        notes.append(f"outputs {', '.join(dropped)} dropped; {model.graph.output[0].name} is the segmentation map")
    # probe the output once at the reference size
    pre0 = resolve_input(spec, facts)[0]
    batch = dims[0] if isinstance(dims[0], int) else max(opts.batch, 1)
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    session = _session(probe_model)
    try:
        y = session.run(None, {inp.name: pre0.random_input(batch)})[0]
    except Exception as exc:  # ORT's InvalidArgument and friends
        raise InputError(f"ONNX Runtime cannot run {path.name} on a {list(pre0.input_shape(batch))} input: "
                         f"{str(exc).strip().splitlines()[0][:300]}") from None
    ids = y.dtype.kind in "iu"
    probed_shape = list(y.shape)
    in_hw = (pre0.height, pre0.width)
    out_layout, squeeze_axis, binary = "NCHW", None, False
    if ids:
        if y.ndim == 4 and (y.shape[1] == 1 or y.shape[3] == 1):
            squeeze_axis = 1 if y.shape[1] == 1 else 3
            out_layout = "NCHW" if squeeze_axis == 1 else "NHWC"
            y = y.squeeze(squeeze_axis)
        if y.ndim != 3:
            raise InputError(f"the model outputs integers of shape {list(y.shape)}: class ids must be N x H x W "
                             "(or N x 1 x H x W, N x H x W x 1)")
        num_classes, kind, out_hw = None, "class_ids", tuple(y.shape[1:])
    else:
        if y.ndim != 4 or (y.shape[1:3] == (1, 1) or y.shape[2:4] == (1, 1)):
            raise InputError(f"the model outputs {list(y.shape)} for a {list(pre0.input_shape(batch))} input: not a "
                             "segmentation map (a classifier?); expected N x C x H x W or N x H x W x C")
        out_layout = read_output_layout(y.shape, in_hw, spec.output_layout)
        if out_layout == "NHWC":
            y = y.transpose(0, 3, 1, 2)
        num_classes, out_hw = int(y.shape[1]), tuple(y.shape[2:])
        binary = num_classes == 1
        if binary:
            kind = _one_channel_kind(y, _sigmoid_output(model), spec.output)
            num_classes = 2
        else:
            sums = y.sum(axis=1)
            kind = "probabilities" if y.min() >= 0 and y.max() <= 1 and np.allclose(sums, 1.0, atol=1e-3) else "logits"
    facts.num_classes, facts.output_kind = num_classes, kind
    facts.output_layout, facts.binary = out_layout, binary
    resolved = resolve(spec, facts)
    pre = resolved.preprocess
    validate_options(opts, pre.height, pre.width, None)
    if opts.argmax and not opts.fused_io and ids:
        raise InputError("--argmax: the model already outputs class ids")
    if squeeze_axis is not None:
        _squeeze_ids(model, squeeze_axis)
        notes.append(f"class ids with a channel axis ({out_layout}): axis {squeeze_axis} squeezed in the graph")
    if out_layout == "NHWC" and not ids:
        _to_nchw(model)
        notes.append("output is NHWC: transposed to NCHW in the graph")
    threshold = resolved.threshold
    if binary:
        assert threshold is not None
        _binary(model, kind, threshold)
        notes.append(f"one {'probability' if kind == 'probabilities' else 'logit'} channel: a binary model; the graph "
                     f"returns background and foreground scores whose argmax is probability > {threshold:g}")
    upsample = out_hw != (pre.height, pre.width)
    if upsample:
        _upsample(model, layout, ids, opset)
        notes.append(f"output is {out_hw[0]}x{out_hw[1]} for a {pre.height}x{pre.width} input: upsampled to the "
                     f"input size in the graph ({'nearest' if ids else 'bilinear, align_corners=False'})")
    ensure_writable(out_dir)
    log(f"importing {path.name}: input {inp.name} {dims} ({layout}), output {model.graph.output[0].name} "
        f"{probed_shape} ({kind}{', ' + out_layout if not ids else ''}), opset {opset}")
    for note in notes:
        log(f"adapted: {note}")
    out_dims: list[int | str] = [dims[0]] + ([] if ids else [num_classes or "classes"]) + [dims[hi], dims[wi]]
    done = finish_graph(model, opts, log, out_dims, what=f"the imported {path.name}", pre=pre,
                        num_classes=len(resolved.classes))

    def post(out: np.ndarray) -> np.ndarray:
        """The original output read as the adopted graph returns it (before any upsampling)."""
        if squeeze_axis is not None:
            out = out.squeeze(squeeze_axis)
        if out_layout == "NHWC" and not ids:
            out = out.transpose(0, 3, 1, 2)
        if binary:
            out = _binary_np(out, kind, threshold)
        return out

    def reference(arr: np.ndarray) -> np.ndarray:
        out = post(session.run(None, {inp.name: arr})[0])  # the probe graph: uint8 inputs already wrapped
        if upsample:
            h, w = arr.shape[hi], arr.shape[wi]
            out = _torch_upsample(out, (h, w), ids)
        return out

    stride = 32
    shapes = verification_shapes(batch, dynamic, pre.height, pre.width, stride)
    shapes = [(n, max(MIN_SIDE, h), max(MIN_SIDE, w)) for n, h, w in shapes]
    fused = pre.fused() if opts.fused_io else None
    cases = parity_inputs(fused or pre, shapes, images or [])  # uint8 pixels for a fused model
    float_cases = [(name, fused.from_pixels(a)) for name, a in cases] if fused is not None else cases
    tflite = _tflite_check(path, original, output_index, post, float_cases[:1] + float_cases[len(shapes):], ids, log) \
        if source_kind == "tflite" else None
    parity = run_parity(reference, done.graph, done.final, cases, reference_ids=ids, fused=fused)
    log(describe_parity(parity))
    require_parity(parity, f"the original {path.name}" + (" (converted to ONNX)" if tflite is not None else ""))
    model_record = {"source": source_kind, "label": path.name, "tflite_runtime_check": tflite, "config": None, "output_adaptations": notes,
                    "source_notes": [], "original_io": {"input": inp.name, "input_shape": dims,
                                                        "outputs": [o.name for o in original.graph.output],
                                                        "input_dtype": "uint8" if uint8_input else "float32",
                                                        "output_layout": out_layout, "opset": opset}}
    src_record = {"kind": source_kind, "file": str(path), "file_sha256": original_sha}
    fp = fingerprint(src_record, fingerprinted_spec(resolved, opts))
    export_record = {"exporter": "import", "dynamic": sorted(dynamic), "batch": batch,
                     "simplify": done.simplify_note, "aspp": done.aspp, "passes": [r.to_dict() for r in done.reports],
                     "notes": done.notes, "seconds": round(time.perf_counter() - t0, 2)}
    entry = manifest_entry(done.final, resolved, f"{opts.name}.onnx", model=model_record,
                           source=dict(src_record, fingerprint=fp), export=export_record, parity=parity.to_dict(),
                           argmax=opts.argmax or ids, fused_io=opts.fused_io)
    onnx_path, manifest_path = write_artifact(done.final, entry, out_dir, opts.name)
    return ExportResult(onnx_path, manifest_path, entry, notes + done.notes + resolved_notes(resolved))

