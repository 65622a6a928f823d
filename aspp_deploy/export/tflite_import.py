"""TFLite -> ONNX without TensorFlow: a ``.tflite`` file as a model source.

``tflite_to_onnx`` reads the flatbuffer with the ``tflite`` package (the generated schema classes;
flatbuffers + numpy only, installed by the ``tflite`` extra) and emits an equivalent opset-17 graph.
The graph's boundary keeps the TFLite layout (NHWC input, outputs shaped as in the file, named after
the TFLite output tensors); inside, every 4-D activation is NCHW: one Transpose after the input, one
before each 4-D output (and around the few layout-bound ops such as RESHAPE). Constants are folded at
conversion time: float16 / int8 weights behind DEQUANTIZE become float32 initializers. Padding follows
TFLite exactly (SAME may be asymmetric: the extra row/column goes after, as explicit pads).

MediaPipe's custom ``Convolution2DTransposeBias`` is a transposed convolution with bias: inputs
(data, OHWI weights, bias), custom options = TfLiteTransposeConvParams ``{int32 padding (1 SAME,
2 VALID), int32 stride_w, int32 stride_h}``; the output size is the one stored in the file, and the
padding is TFLite's SAME rule applied as if the output were the input of a forward convolution
(XNNPACK's ``CalculateTransposeConvPaddings``: top/left = total // 2, the rest bottom/right).

``tflite_reference`` runs the original file in ai-edge-litert (the LiteRT interpreter) for parity
checks. Its stock kernels lack the MediaPipe custom op, but its default XNNPACK delegate implements
``Convolution2DTransposeBias``, so the selfie segmenters run there (with the delegate on, as it is by
default).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aspp_deploy.errors import InputError, MissingDependencyError, require

OPSET = 17
_NCHW, _NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
# TFLite TensorType -> numpy dtype (the types a float model's weights and shape operands use).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 9: np.int8, 10: np.float64}
_INSTALL = "pip install 'aspp-deploy[tflite]'"


def _require_tflite() -> Any:  # the generated schema classes; typed loosely on purpose
    return require("tflite", f"reading .tflite files needs it: {_INSTALL}")


def _read(path: Path) -> bytes:
    try:
        buf = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise InputError(f"{Path(path).name} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    return buf


def _sanitise(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.:/-]", "_", name) or "tensor"


def _same_pads(size: int, out: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite's SAME padding (``ComputePaddingWithOffset``): the odd pixel goes after."""
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


@dataclass
class _Op:
    kind: str  # builtin name ("CONV_2D") or custom code ("Convolution2DTransposeBias")
    index: int
    inputs: list[int]  # tensor indices, -1 for an omitted optional input
    outputs: list[int]
    raw: Any  # the tflite.Operator


class _Converter:
    def __init__(self, path: Path, buf: bytes):
        self.tfl = _require_tflite()
        self.path, self.buf = path, buf
        self.model: Any = self.tfl.Model.GetRootAs(buf, 0)
        if self.model.SubgraphsLength() != 1:
            raise InputError(f"{path.name}: {self.model.SubgraphsLength()} subgraphs; the converter takes "
                             "single-graph models (no control flow)")
        self.graph: Any = self.model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[int, np.ndarray] = {}
        self._cache: dict[tuple, str] = {}
        self._count = 0
        ops = self.tfl.BuiltinOperator
        self._op_names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
        self._custom = ops.CUSTOM

    # ---- TFLite side -------------------------------------------------------------------------
    def tensor(self, idx: int) -> Any:
        return self.graph.Tensors(idx)

    def shape(self, idx: int) -> list[int]:
        t = self.tensor(idx)
        return [int(d) for d in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def rank(self, idx: int) -> int:
        return len(self.shape(idx))

    def _buffer(self, idx: int) -> np.ndarray | None:
        t = self.tensor(idx)
        buffer = self.model.Buffers(t.Buffer())
        if buffer is None:
            return None
        if buffer.DataLength():
            raw = buffer.DataAsNumpy().tobytes()
        elif buffer.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer
            raw = self.buf[buffer.Offset():buffer.Offset() + buffer.Size()]
        else:
            return None
        dtype = _DTYPES.get(t.Type())
        if dtype is None or t.Sparsity() is not None:
            raise InputError(f"{self.path.name}: constant tensor {t.Name().decode()!r} has an unsupported "
                             f"type {t.Type()}{' (sparse)' if t.Sparsity() is not None else ''}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape(idx)).copy()

    def const(self, idx: int) -> np.ndarray | None:
        if idx < 0:
            return None
        if idx not in self.consts:
            value = self._buffer(idx)
            if value is None:
                return None
            self.consts[idx] = value
        return self.consts[idx]

    def need_const(self, op: _Op, idx: int) -> np.ndarray:
        value = self.const(idx)
        if value is None:
            raise InputError(f"{self.path.name}: operator {op.kind} (#{op.index}) needs a constant "
                             f"operand, got the computed tensor {self.tensor(idx).Name().decode()!r}")
        return value

    def weights(self, op: _Op, idx: int) -> np.ndarray:
        """A constant float operand (weights, bias) as float32; integer weights without a DEQUANTIZE
        (hybrid quantization) are refused rather than read as numbers."""
        value = self.need_const(op, idx)
        if value.dtype not in (np.float32, np.float16, np.float64):
            raise InputError(f"{self.path.name}: {op.kind} (#{op.index}) has {value.dtype} weights: quantized "
                             "models are not supported by the converter")
        return value.astype(np.float32)

    def options(self, op: _Op, cls_name: str):
        table = op.raw.BuiltinOptions()
        opts = getattr(self.tfl, cls_name)()
        if table is not None:
            opts.Init(table.Bytes, table.Pos)
        return opts

    # ---- ONNX side ---------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def name(self, idx: int) -> str:
        return f"t{idx}"

    def initializer(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def emit(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def value(self, idx: int, rank: int = 0) -> str:
        """The ONNX name of tensor ``idx`` in the internal layout (4-D = NCHW); a constant is
        materialised as an initializer, first broadcast up to ``rank`` dims the NHWC way."""
        value = self.const(idx)
        if value is None:
            return self.name(idx)
        key = (idx, max(rank, value.ndim))
        if key not in self._cache:
            if value.dtype == np.float16 or value.dtype == np.float64:
                value = value.astype(np.float32)
            value = value.reshape((1,) * (key[1] - value.ndim) + value.shape)
            if value.ndim == 4:
                value = value.transpose(_NCHW)
            self._cache[key] = self.initializer(value, "c")
        return self._cache[key]

    def transpose(self, name: str, perm: tuple[int, ...], output: str | None = None) -> str:
        return self.emit("Transpose", [name], output, perm=list(perm))

    def activation(self, name: str, code: int, output: str, op: _Op) -> None:
        """Apply a TFLite fused activation (ActivationFunctionType) writing ``output``."""
        if code == 0:
            self.emit("Identity", [name], output)
        elif code == 1:
            self.emit("Relu", [name], output)
        elif code in (2, 3):
            low, high = (-1.0, 1.0) if code == 2 else (0.0, 6.0)
            self.emit("Clip", [name, self.initializer(np.array(low, np.float32), "min"),
                               self.initializer(np.array(high, np.float32), "max")], output)
        elif code == 4:
            self.emit("Tanh", [name], output)
        else:
            raise InputError(f"{self.path.name}: fused activation {code} of {op.kind} (#{op.index}) "
                             "is not supported by the converter")

    def out(self, op: _Op, k: int = 0) -> str:
        return self.name(op.outputs[k])

    # ---- driver ------------------------------------------------------------------------------
    def op_kind(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == self._custom:
            return (code.CustomCode() or b"?").decode()
        return self._op_names.get(builtin, f"builtin #{builtin}")

    def operators(self) -> list[_Op]:
        ops = []
        for i in range(self.graph.OperatorsLength()):
            raw = self.graph.Operators(i)
            ops.append(_Op(self.op_kind(raw), i, [int(t) for t in raw.InputsAsNumpy()] if raw.InputsLength() else [],
                           [int(t) for t in raw.OutputsAsNumpy()], raw))
        return ops

    def convert(self) -> onnx.ModelProto:
        ops = self.operators()
        unsupported = sorted({op.kind for op in ops} - set(_CONVERTERS))
        if unsupported:
            what = f"operator {unsupported[0]} is" if len(unsupported) == 1 else \
                f"operators {', '.join(unsupported)} are"
            raise InputError(f"{self.path.name}: TFLite {what} not supported by the converter "
                             f"(supported: {', '.join(sorted(_CONVERTERS))})")
        inputs, outputs = [], []
        used: set[str] = set()

        def boundary_name(idx: int) -> str:
            base = name = _sanitise(self.tensor(idx).Name().decode(errors="replace"))
            k = 1
            while name in used:
                k += 1
                name = f"{base}_{k}"
            used.add(name)
            return name

        for i in range(self.graph.InputsLength()):
            idx = int(self.graph.Inputs(i))
            if self.tensor(idx).Type() != 0:
                raise InputError(f"{self.path.name}: input {self.tensor(idx).Name().decode()!r} is not float32; "
                                 "quantized models are not supported by the converter")
            name = boundary_name(idx)
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, self.shape(idx)))
            if self.rank(idx) == 4:
                self.transpose(name, _NCHW, self.name(idx))
            else:
                self.emit("Identity", [name], self.name(idx))
        for op in ops:
            _CONVERTERS[op.kind](self, op)
        for i in range(self.graph.OutputsLength()):
            idx = int(self.graph.Outputs(i))
            name = boundary_name(idx)
            src = self.value(idx)
            if self.rank(idx) == 4:
                self.transpose(src, _NHWC, name)
            else:
                self.emit("Identity", [src], name)
            dtype = helper.np_dtype_to_tensor_dtype(np.dtype(_DTYPES.get(self.tensor(idx).Type(), np.float32)))
            outputs.append(helper.make_tensor_value_info(name, dtype, self.shape(idx)))
        graph = helper.make_graph(self.nodes, _sanitise(self.path.stem), inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="aspp_deploy.tflite_import")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


# ---- operator converters ------------------------------------------------------------------------

def _dequantize(c: _Converter, op: _Op) -> None:
    src = c.const(op.inputs[0])
    if src is None:
        raise InputError(f"{c.path.name}: DEQUANTIZE of a computed tensor (#{op.index}): quantized "
                         "activations are not supported by the converter")
    if src.dtype != np.float16:  # int8 / uint8 weights: (q - zero_point) * scale, per tensor or channel
        q = c.tensor(op.inputs[0]).Quantization()
        if q is None or not q.ScaleLength():
            raise InputError(f"{c.path.name}: DEQUANTIZE (#{op.index}) of {src.dtype} weights without scales")
        scale = q.ScaleAsNumpy().astype(np.float32)
        zero = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.zeros_like(scale)
        if scale.size > 1:
            shape = [1] * src.ndim
            shape[q.QuantizedDimension()] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        src = (src.astype(np.float32) - zero) * scale
    c.consts[op.outputs[0]] = src.astype(np.float32)


def _conv_pads(c: _Converter, op: _Op, padding: int, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int] = (1, 1)) -> list[int]:
    (_, h, w, _), (_, oh, ow, _) = c.shape(op.inputs[0]), c.shape(op.outputs[0])
    if padding != 0:  # VALID
        return [0, 0, 0, 0]
    top, bottom = _same_pads(h, oh, kernel[0], stride[0], dilation[0])
    left, right = _same_pads(w, ow, kernel[1], stride[1], dilation[1])
    return [top, left, bottom, right]


def _conv(c: _Converter, op: _Op, depthwise: bool) -> None:
    o = c.options(op, "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions")
    weight = c.weights(op, op.inputs[1])
    if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], one group per input channel
        weight, group = weight.transpose(3, 0, 1, 2), c.shape(op.inputs[0])[3]
    else:  # OHWI -> OIHW
        weight = weight.transpose(_NCHW)
        group = c.shape(op.inputs[0])[3] // weight.shape[1]
    stride, dilation = (o.StrideH(), o.StrideW()), (o.DilationHFactor(), o.DilationWFactor())
    kernel = (weight.shape[2], weight.shape[3])
    inputs = [c.value(op.inputs[0]), c.initializer(weight, "w")]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(c.initializer(c.weights(op, op.inputs[2]).reshape(-1), "b"))
    y = c.emit("Conv", inputs, kernel_shape=list(kernel), strides=list(stride), dilations=list(dilation),
               group=group, pads=_conv_pads(c, op, o.Padding(), kernel, stride, dilation))
    c.activation(y, o.FusedActivationFunction(), c.out(op), op)


def _transpose_conv(c: _Converter, op: _Op, data: int, weights: int, bias: int, padding_same: bool,
                    stride: tuple[int, int], act: int = 0) -> None:
    weight = c.weights(op, weights).transpose(3, 0, 1, 2)  # OHWI -> I O kh kw
    (_, h, w, _), (_, oh, ow, _) = c.shape(data), c.shape(op.outputs[0])
    kh, kw = weight.shape[2], weight.shape[3]
    pads, extra = [0, 0, 0, 0], [0, 0]
    for axis, (size, out, k, s) in enumerate([(h, oh, kh, stride[0]), (w, ow, kw, stride[1])]):
        before = _same_pads(out, size, k, s)[0] if padding_same else 0
        after = (size - 1) * s + k - out - before  # crop so the output has exactly the stored size
        pads[axis], pads[axis + 2] = before, max(after, 0)
        extra[axis] = max(-after, 0)
    inputs = [c.value(data), c.initializer(weight, "w")]
    if bias >= 0:
        inputs.append(c.initializer(c.weights(op, bias).reshape(-1), "b"))
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": list(stride), "pads": pads}
    if any(extra):
        attrs["output_padding"] = extra
    y = c.emit("ConvTranspose", inputs, **attrs)
    c.activation(y, act, c.out(op), op)


def _mediapipe_transpose_conv_bias(c: _Converter, op: _Op) -> None:
    raw = op.raw.CustomOptionsAsNumpy().tobytes() if op.raw.CustomOptionsLength() else b""
    if len(raw) < 12:
        raise InputError(f"{c.path.name}: Convolution2DTransposeBias (#{op.index}) has {len(raw)} bytes of "
                         "options, expected 12 (padding, stride_w, stride_h)")
    padding, stride_w, stride_h = struct.unpack("<3i", raw[:12])  # TfLitePadding: 1 SAME, 2 VALID
    _transpose_conv(c, op, op.inputs[0], op.inputs[1], op.inputs[2] if len(op.inputs) > 2 else -1,
                    padding == 1, (stride_h, stride_w))


def _builtin_transpose_conv(c: _Converter, op: _Op) -> None:
    o = c.options(op, "TransposeConvOptions")
    _transpose_conv(c, op, op.inputs[2], op.inputs[1], op.inputs[3] if len(op.inputs) > 3 else -1,
                    o.Padding() == 0, (o.StrideH(), o.StrideW()), o.FusedActivationFunction())


def _pool(c: _Converter, op: _Op, onnx_op: str) -> None:
    o = c.options(op, "Pool2DOptions")
    kernel, stride = (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW())
    attrs: dict[str, Any] = {"kernel_shape": list(kernel), "strides": list(stride),
                             "pads": _conv_pads(c, op, o.Padding(), kernel, stride)}
    if onnx_op == "AveragePool":
        attrs["count_include_pad"] = 0  # TFLite divides by the in-bounds count
    y = c.emit(onnx_op, [c.value(op.inputs[0])], **attrs)
    c.activation(y, o.FusedActivationFunction(), c.out(op), op)


def _binary(onnx_op: str, options: str | None) -> Callable[[_Converter, _Op], None]:
    def convert(c: _Converter, op: _Op) -> None:
        rank = max(c.rank(i) for i in op.inputs)
        for i in op.inputs:
            if c.const(i) is None and rank == 4 and c.rank(i) != 4:
                raise InputError(f"{c.path.name}: {op.kind} (#{op.index}) broadcasts a computed "
                                 f"{c.rank(i)}-D tensor against a 4-D one: not supported by the converter")
        y = c.emit(onnx_op, [c.value(i, rank) for i in op.inputs])
        c.activation(y, c.options(op, options).FusedActivationFunction() if options else 0, c.out(op), op)
    return convert


def _unary(onnx_op: str, **attrs) -> Callable[[_Converter, _Op], None]:
    def convert(c: _Converter, op: _Op) -> None:
        c.emit(onnx_op, [c.value(op.inputs[0])], c.out(op), **attrs)
    return convert


def _relu6(c: _Converter, op: _Op) -> None:
    c.activation(c.value(op.inputs[0]), 3, c.out(op), op)


def _resize(mode: str) -> Callable[[_Converter, _Op], None]:
    def convert(c: _Converter, op: _Op) -> None:
        o = c.options(op, "ResizeBilinearOptions" if mode == "linear" else "ResizeNearestNeighborOptions")
        n, h, w, ch = c.shape(op.outputs[0])
        if o.AlignCorners():
            coords = "align_corners"
        elif o.HalfPixelCenters():
            coords = "half_pixel" if mode == "linear" else "tf_half_pixel_for_nn"
        else:
            coords = "asymmetric"
        attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": coords}
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if o.AlignCorners() else "floor"
        sizes = c.initializer(np.array([n, ch, h, w], np.int64), "sizes")
        c.emit("Resize", [c.value(op.inputs[0]), "", "", sizes], c.out(op), **attrs)
    return convert


def _nhwc(c: _Converter, idx: int) -> str:
    """Tensor ``idx`` in its TFLite layout (undoes the internal NCHW of a 4-D activation)."""
    name = c.value(idx)
    return c.transpose(name, _NHWC) if c.rank(idx) == 4 else name


def _from_nhwc(c: _Converter, name: str, op: _Op) -> None:
    if c.rank(op.outputs[0]) == 4:
        c.transpose(name, _NCHW, c.out(op))
    else:
        c.emit("Identity", [name], c.out(op))


def _reshape(c: _Converter, op: _Op) -> None:
    shape = c.initializer(np.array(c.shape(op.outputs[0]), np.int64), "shape")
    _from_nhwc(c, c.emit("Reshape", [_nhwc(c, op.inputs[0]), shape]), op)


def _mean(c: _Converter, op: _Op) -> None:
    axes = [int(a) % c.rank(op.inputs[0]) for a in np.ravel(c.need_const(op, op.inputs[1]))]
    keep = bool(c.options(op, "ReducerOptions").KeepDims())
    if c.rank(op.inputs[0]) == 4:
        y = c.emit("ReduceMean", [c.value(op.inputs[0])], axes=sorted(_NHWC_TO_NCHW_AXIS[a] for a in axes),
                   keepdims=1)
        if keep:
            c.emit("Identity", [y], c.out(op))
        else:
            c.emit("Squeeze", [c.transpose(y, _NHWC), c.initializer(np.array(axes, np.int64), "axes")], c.out(op))
    else:
        c.emit("ReduceMean", [c.value(op.inputs[0])], c.out(op), axes=axes, keepdims=int(keep))


def _pad(c: _Converter, op: _Op) -> None:
    pads = c.need_const(op, op.inputs[1]).astype(np.int64).reshape(-1, 2)
    if len(pads) == 4:
        pads = pads[list(_NCHW)]
    inputs = [c.value(op.inputs[0]), c.initializer(np.concatenate([pads[:, 0], pads[:, 1]]), "pads")]
    if len(op.inputs) > 2:  # PADV2: the constant value
        inputs.append(c.initializer(c.weights(op, op.inputs[2]).reshape(()), "pad_value"))
    c.emit("Pad", inputs, c.out(op), mode="constant")


def _concat(c: _Converter, op: _Op) -> None:
    o = c.options(op, "ConcatenationOptions")
    rank = c.rank(op.outputs[0])
    axis = o.Axis() % rank
    if rank == 4:
        axis = _NHWC_TO_NCHW_AXIS[axis]
    y = c.emit("Concat", [c.value(i, rank) for i in op.inputs], axis=axis)
    c.activation(y, o.FusedActivationFunction(), c.out(op), op)


def _fully_connected(c: _Converter, op: _Op) -> None:
    o = c.options(op, "FullyConnectedOptions")
    weight = c.weights(op, op.inputs[1])  # [units, depth]; the input is flattened to [-1, depth]
    flat = c.initializer(np.array([-1, weight.shape[1]], np.int64), "shape")
    inputs = [c.emit("Reshape", [_nhwc(c, op.inputs[0]), flat]), c.initializer(weight, "w")]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(c.initializer(c.weights(op, op.inputs[2]).reshape(-1), "b"))
    y = c.emit("Gemm", inputs, transB=1)
    y = c.emit("Reshape", [y, c.initializer(np.array(c.shape(op.outputs[0]), np.int64), "shape")])
    act = c.fresh("fc")
    c.activation(y, o.FusedActivationFunction(), act, op)
    _from_nhwc(c, act, op)


def _prelu(c: _Converter, op: _Op) -> None:
    c.emit("PRelu", [c.value(op.inputs[0]), c.value(op.inputs[1], c.rank(op.inputs[0]))], c.out(op))


_CONVERTERS: dict[str, Callable[[_Converter, _Op], None]] = {
    "ADD": _binary("Add", "AddOptions"),
    "SUB": _binary("Sub", "SubOptions"),
    "MUL": _binary("Mul", "MulOptions"),
    "DIV": _binary("Div", "DivOptions"),
    "MAXIMUM": _binary("Max", None),
    "MINIMUM": _binary("Min", None),
    "AVERAGE_POOL_2D": lambda c, op: _pool(c, op, "AveragePool"),
    "MAX_POOL_2D": lambda c, op: _pool(c, op, "MaxPool"),
    "CONCATENATION": _concat,
    "CONV_2D": lambda c, op: _conv(c, op, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda c, op: _conv(c, op, depthwise=True),
    "TRANSPOSE_CONV": _builtin_transpose_conv,
    "Convolution2DTransposeBias": _mediapipe_transpose_conv_bias,
    "DEQUANTIZE": _dequantize,
    "FULLY_CONNECTED": _fully_connected,
    "HARD_SWISH": _unary("HardSwish"),
    "LOGISTIC": _unary("Sigmoid"),
    "PRELU": _prelu,
    "RELU": _unary("Relu"),
    "RELU6": _relu6,
    "TANH": _unary("Tanh"),
    "MEAN": _mean,
    "PAD": _pad,
    "PADV2": _pad,
    "RESHAPE": _reshape,
    "RESIZE_BILINEAR": _resize("linear"),
    "RESIZE_NEAREST_NEIGHBOR": _resize("nearest"),
}


def supported_operators() -> list[str]:
    return sorted(_CONVERTERS)


def tflite_operators(path: Path) -> dict[str, int]:
    """Operator name -> count in the main graph (custom ops by their custom code)."""
    conv = _Converter(Path(path), _read(Path(path)))
    counts: dict[str, int] = {}
    for op in conv.operators():
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return counts


def tflite_to_onnx(path: Path) -> onnx.ModelProto:
    """Convert a float TFLite model to an equivalent ONNX graph (opset 17, NHWC boundary)."""
    path = Path(path)
    buf = _read(path)
    try:
        return _Converter(path, buf).convert()
    except (InputError, MissingDependencyError):
        raise
    except Exception as exc:  # a corrupt or truncated flatbuffer fails anywhere inside the schema reader
        raise InputError(f"{path.name} is not a readable TFLite model (corrupt or truncated: "
                         f"{type(exc).__name__})") from None


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for the duration (C libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tflite_reference(path: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``run(x)`` -> the TFLite file's outputs, in its output order, computed by ai-edge-litert."""
    path = Path(path)
    _read(path)
    Interpreter = require("ai_edge_litert.interpreter", "running .tflite files needs it: pip install ai-edge-litert"
                          ).Interpreter
    try:
        with _quiet_stderr():  # LiteRT announces its XNNPACK delegate on the C stderr
            interpreter = Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path.name}: the LiteRT interpreter cannot run this model: {first}") from exc
    inputs, outs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1:
        raise InputError(f"{path.name}: {len(inputs)} inputs; tflite_reference runs single-input models")
    inp = inputs[0]

    def run(x: np.ndarray) -> list[np.ndarray]:
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=inp["dtype"]))
        interpreter.invoke()
        return [interpreter.get_tensor(o["index"]).copy() for o in outs]

    return run
