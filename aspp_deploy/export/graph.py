"""Small helpers over an ONNX graph: loading, static shapes, initializers, attributes, FLOP counts."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import helper, numpy_helper, shape_inference

from aspp_deploy.errors import InputError


def external_data_files(model: onnx.ModelProto, path: Path | str) -> dict[str, Path]:
    """Location -> file of every tensor of ``model`` (as read from ``path``, without its external data)
    that keeps its bytes in another file. One InputError naming the location when it is not a plain
    relative path inside the model's folder (absolute, ``..``, a link out of the folder) or the file
    is missing: nothing outside the model's folder is ever read."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    path = Path(path)
    folder = path.parent.resolve()
    found: dict[str, Path] = {}
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if location in found:
            continue
        parts = location.replace("\\", "/").split("/")
        if (not location or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location)
                or ".." in parts or "\0" in location):
            raise InputError(f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's "
                             "folder: external data must be a file beside the model (a relative path, no '..')")
        target = folder / location
        if not target.resolve().is_relative_to(folder):
            raise InputError(f"{path}: the external data file {location!r} is a link out of the model's folder: "
                             "refused (copy the file beside the model)")
        if not target.is_file():
            raise InputError(f"{path}: its external data file {location!r} is missing (expected at {target}): "
                             "copy it beside the model")
        found[location] = target
    return found


def load_onnx(path: Path | str, external_data: bool = True) -> onnx.ModelProto:
    """An ONNX model from ``path``; one clear InputError when the file is missing or unreadable, or
    an external data file it names is missing or outside its folder (``external_data_files``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): not an ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    # protobuf parses many non-ONNX byte strings into an empty message: a model has a graph with nodes
    if not model.HasField("graph") or not model.graph.node or not model.opset_import:
        raise InputError(f"{path} is not an ONNX model (no graph, nodes or opset)")
    external = external_data_files(model, path)
    if external and external_data:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # a truncated file, an offset beyond its end, ...
            raise InputError(f"{path}: its external data ({', '.join(sorted(external))}) cannot be read "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from None
    return model


def infer(model: onnx.ModelProto) -> onnx.ModelProto:
    return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Tensor name -> shape (ints where static, symbol names or None where not)."""
    g = infer(model).graph
    shapes: dict[str, list[int | str | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                               for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def is_static(shape: list | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def constant_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers plus outputs of Constant nodes (both are compile-time constants)."""
    values = dict(initializers(model))
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = a.t
    return values


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def count_flops(model: onnx.ModelProto) -> int:
    """FLOPs of one forward pass: 2 per multiply-accumulate of Conv/Gemm/MatMul, and 8 per
    output element of a linear Resize (4 MACs: the bilinear blend of 4 neighbours). Other
    operators (ReLU, Add, pooling, ...) are not counted: they are memory-bound."""
    shapes = static_shapes(model)
    inits = initializers(model)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv" and is_static(out) and node.input[1] in inits:
            w = inits[node.input[1]].dims  # (Cout, Cin/g, kh, kw)
            macs = 1
            for d in w:
                macs *= d
            total += 2 * macs * out[0] * out[2] * out[3]  # type: ignore[index, operator]
        elif node.op_type in ("Gemm", "MatMul") and is_static(out):
            a = shapes.get(node.input[0])
            if is_static(a):
                n_out = 1
                for d in out:  # type: ignore[union-attr]
                    n_out *= d  # type: ignore[operator]
                total += 2 * n_out * a[-1]  # type: ignore[index, operator]
        elif node.op_type == "Resize" and is_static(out) and attr(node, "mode", b"nearest") == b"linear":
            n_out = 1
            for d in out:  # type: ignore[union-attr]
                n_out *= d  # type: ignore[operator]
            total += 8 * n_out
    return total


def to_array(t: onnx.TensorProto):
    return numpy_helper.to_array(t)
