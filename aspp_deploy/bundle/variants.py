"""The quantized ONNX files a bundle ships beside the FP32 one: FP16 and INT8 (TensorRT Q/DQ)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional

from aspp_deploy.bench.rows import made_from
from aspp_deploy.precision.quantize import QuantizeOptions, default_output, quantized_onnx_from_fp32


def quantized_variants(fp32: Path, precisions: List[str], calib: Optional[Path], data: Optional[Path],
                       backend: str, log: Callable[[str], None] = lambda m: None,
                       step: Callable[[str], ContextManager] = lambda text: nullcontext()) -> Dict[str, Path]:
    """Precision -> the ONNX for it beside ``fp32`` (``default_output``'s name, target trt): reused when
    it was made from this very ``fp32``, else quantized as ``aspp-deploy quantize --target trt`` does,
    calibrated on ``calib`` and measured on ``data``. ``step(text)`` wraps each quantization (a
    progress display), ``log`` gets the reuse lines and the quantizer's own, indented."""
    made: Dict[str, Path] = {}
    for precision in precisions:
        path = default_output(fp32, precision, "trt")
        if made_from(path, fp32):
            log(f"reusing {path}")
        else:
            opts = QuantizeOptions(precision=precision, target="trt", calib=calib, data=data, out=path,
                                   backend=backend)
            with step(f"quantizing to {precision}"):
                path = quantized_onnx_from_fp32(fp32, opts, log=lambda m: log(f"  {m}")).onnx_path
        made[precision] = path
    return made
