"""Entry points of the precision package for other commands (``compare`` makes its reduced
precision rows through ``quantize_for_compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from aspp_deploy.precision.quantize import QuantizeOptions, QuantizeResult, quantized_onnx_from_fp32

# compare measures accuracy itself on the whole split: the manifest's own figure uses a few images.
COMPARE_EVAL_IMAGES = 8
COMPARE_CPU_METHOD = "minmax"


def quantize_for_compare(fp32_onnx: Path, out_path: Path, precision: str, target: str = "trt",
                         log: Callable[[str], None] = lambda m: None, data: Path | None = None,
                         calib: Path | None = None, threads: int = 0) -> Path:
    """``aspp-deploy quantize --onnx FP32 --precision P --target T --out OUT --data DATA --calib CALIB``
    with the default 0.5-point budget (None: the shipped calibration images, the default validation
    data; ``--method minmax`` for the cpu INT8 row); returns the path."""
    # The cpu INT8 row is calibrated with minmax, not `quantize`'s measured choice (--method auto: four
    # calibrations), which would add about a minute to a cold compare of the shipped model.
    opts = QuantizeOptions(precision=precision, target=target, out=Path(out_path), data=data, calib=calib,
                           eval_images=COMPARE_EVAL_IMAGES, threads=threads,
                           method=COMPARE_CPU_METHOD if precision == "int8" and target == "cpu" else None)
    result: QuantizeResult = quantized_onnx_from_fp32(Path(fp32_onnx), opts, log=log)
    return result.onnx_path
