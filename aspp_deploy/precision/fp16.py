"""FP16: a strongly typed mixed-precision ONNX, inputs and outputs kept FP32 (a fused-I/O model's
uint8 pixels and class ids kept uint8: its fused nodes are on the block list, ``keep_fused_float``).

First choice: ModelOpt AutoCast (``modelopt_backend.ModelOptFp16Builder``), which runs the model
on calibration images and keeps in FP32 every node whose activations leave FP16's safe range.
Fallback when ModelOpt is not installed: ``onnxconverter_common.float16`` (Microsoft's converter,
used by ONNX Runtime's own tools) with ``keep_io_types=True``, its default block list (it keeps
``Resize`` and other numerically or type-sensitive operators FP32) and the nodes the accuracy
budget asks to keep. Either way the graph stays at the source's opset (17 from our exporter).
"""

from __future__ import annotations

from importlib import util
from pathlib import Path

import onnx

from aspp_deploy.errors import MissingDependencyError
from aspp_deploy.export.fused_io import keep_fused_float


def onnxconverter_available() -> bool:
    return util.find_spec("onnxconverter_common") is not None


class ConverterFp16Builder:
    def __init__(self, fp32: Path) -> None:
        if not onnxconverter_available():
            raise MissingDependencyError("FP16 conversion needs ModelOpt or onnxconverter-common: "
                                         "pip install 'aspp-deploy[quant]'")
        self.fp32 = fp32
        self.notes: list[str] = []

    def graph(self) -> onnx.ModelProto:
        return onnx.load(str(self.fp32))

    def build(self, exclude: list[str], out: Path) -> None:
        from onnxconverter_common import float16

        source = self.graph()
        model = float16.convert_float_to_float16(source, keep_io_types=True,
                                                 node_block_list=keep_fused_float(exclude, source) or None)
        restore_float_outputs(model, source)
        onnx.save(model, str(out))


def restore_float_outputs(model: onnx.ModelProto, source: onnx.ModelProto) -> int:
    """Give back FP32 graph outputs that the converter turned FP16.

    ``convert_float_to_float16(keep_io_types=True)`` misses an output whose producer is on its
    block list (our final ``Resize``): it casts the FP32 result to FP16 and declares the output
    FP16. Here that trailing Cast goes (or, if its input really is FP16, casts to FP32 instead).
    Returns how many outputs were repaired.
    """
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    wanted = {o.name: o.type.tensor_type.elem_type for o in source.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    producer = {o: n for n in model.graph.node for o in n.output}
    repaired = 0
    for out in model.graph.output:
        if wanted.get(out.name) != FLOAT or out.type.tensor_type.elem_type != HALF:
            continue
        cast = producer.get(out.name)
        upstream = producer.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
        if cast is not None and upstream is not None and types.get(cast.input[0]) == FLOAT:
            upstream.output[list(upstream.output).index(cast.input[0])] = out.name
            model.graph.node.remove(cast)
        else:
            inner = f"{out.name}_fp16"
            if cast is not None:
                cast.output[list(cast.output).index(out.name)] = inner
            model.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=FLOAT,
                                                          name=f"{out.name}_to_fp32"))
        out.type.tensor_type.elem_type = FLOAT
        repaired += 1
    return repaired
