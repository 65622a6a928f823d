"""The words every stage shares, defined once: precisions, runtimes, targets, tensor layouts, channel orders,
resize policies and output kinds. Each is a ``str`` enum, so a member equals its value (``Precision.int8
== "int8"``) and reads and writes manifests and JSON unchanged; the CLI's choices are these enums or
subsets of them (``subset``). Portable: standard library only, Python 3.8."""

from __future__ import annotations

from enum import Enum
from typing import Type, TypeVar

E = TypeVar("E", bound=Enum)


class Word(str, Enum):
    """A str enum that prints as its value (``f"{Precision.int8}"`` is ``int8`` on every Python)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__  # type: ignore[assignment]


class Precision(Word):
    """Numeric precision of an artifact's compute."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Runtime(Word):
    """An inference runtime that runs a model (``--backend`` of bench, eval and predict); the backends
    registry (``backends/registry.py``) has one record per member."""

    torch = "torch"
    onnxruntime = "onnxruntime"
    trt = "trt"
    openvino = "openvino"


class Target(Word):
    """What a quantized ONNX is made for: TensorRT (Q/DQ it fuses) or the CPU runtimes (ORT, OpenVINO)."""

    trt = "trt"
    cpu = "cpu"


class Layout(Word):
    """Axis order of an image tensor."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class ChannelOrder(Word):
    RGB = "RGB"
    BGR = "BGR"


class ResizePolicy(Word):
    """How an image of another size is brought to the model's input size."""

    stretch = "stretch"
    letterbox = "letterbox"
    center_crop = "center_crop"


class OutputKind(Word):
    """What the model's output holds per pixel."""

    logits = "logits"
    probabilities = "probabilities"
    class_ids = "class_ids"


def subset(name: str, enum: Type[E], *members: E) -> Type[E]:
    """A str enum called ``name`` with some of ``enum``'s members (same names and values), for a CLI
    option that takes only those: ``subset("QuantPrecision", Precision, Precision.fp16, Precision.int8)``."""
    made = Word(name, {m.name: m.value for m in members})  # type: ignore[call-overload]
    made.__doc__ = f"{', '.join(m.value for m in members)} (of {enum.__name__})"
    return made  # type: ignore[return-value]
