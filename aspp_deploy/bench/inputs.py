"""What ``aspp-deploy bench`` times: the input geometry an artifact takes, and its precision, from its
manifest (an ONNX's or an engine's) or from the PyTorch source."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from aspp_deploy.errors import InputError
from aspp_deploy.export.manifest import read_onnx_manifest
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.trt.runtime import read_engine_manifest
from aspp_deploy.runtime.vocab import Precision, Target


def input_geometry(backend: str, model: Optional[Path], batch: int, height: int, width: int,
                   trust_code: bool = False) -> Tuple[Preprocess, int]:
    """(preprocessing at the size asked for, batch) for the artifact (0: the model's size), refusing sizes a
    static model cannot take."""
    if backend == "torch":
        from aspp_deploy.model.sources import load_source  # torch: imported for a torch artifact only

        # TorchScript / .pt2 record no preprocessing: 512 unless given
        pre = load_source(model, trust_code=trust_code).preprocess or Preprocess()
        return pre.with_size(height or pre.height, width or pre.width), batch
    if model is None:
        raise InputError(f"--backend {backend} needs --model")
    if backend == "trt":
        pre = Preprocess.from_dict(read_engine_manifest(model)["preprocess"])
        return pre.with_size(height or pre.height, width or pre.width), batch
    manifest = read_onnx_manifest(model)
    pre = manifest.preprocess()
    image_input = manifest.typed.input
    shape = (image_input.shape if image_input is not None else None) or []
    sized = pre.with_size(height or pre.height, width or pre.width)
    wanted = list(sized.input_shape(batch))
    axes = ("batch", "height", "width", "channels") if pre.input_layout == "NHWC" else ("batch", "channels", "height", "width")
    for axis, (have, want) in enumerate(zip(shape, wanted)):
        if isinstance(have, int) and have != want:
            what = axes[axis]
            raise InputError(f"{model.name} has a static {what} of {have}; {want} asked for "
                             "(export with --dynamic for other sizes)")
    return sized, batch


def artifact_precision(backend: str, model: Optional[Path]) -> str:
    """What the artifact is, from its manifest (fp32, fp16, int8 (cpu QDQ), ...): never a default label."""
    if backend == "torch" or model is None:
        return "fp32"
    if backend == "trt":
        return str(read_engine_manifest(model).get("precision") or "unknown")
    entry = read_onnx_manifest(model).typed
    if entry.precision is Precision.int8 and entry.target is not None:
        return f"int8 ({'cpu' if entry.target is Target.cpu else 'TensorRT'} QDQ)"
    return entry.precision.value
