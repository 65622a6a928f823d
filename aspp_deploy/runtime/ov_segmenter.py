"""``OpenVinoSegmenter(onnx).predict(image) -> class-id mask``: the runtime on OpenVINO (CPU), the fastest
CPU engine we measured for our FP32 and cpu-target INT8 ONNX files (``benchmarks/bench_openvino.py``).

``Segmenter(OvEngine(onnx, threads, cache_dir))`` under its own name: the same API as ``Segmenter``.
The compile configuration is ``engines.ov_engine``'s (f32 precision, one stream, the LATENCY hint,
``threads`` inference threads; the compiled model cached in ``cache_dir`` when one is given: a
bundle's ``segment`` uses ``engines/openvino-cache``). OpenVINO is imported when a segmenter is made;
torch, onnx and ONNX Runtime are never imported. Python 3.8 syntax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from aspp_deploy.runtime.engines.ov_engine import (INFERENCE_PRECISION, OPENVINO_INSTALL_HINT, OvEngine,
                                                   openvino_installed, openvino_message)
from aspp_deploy.runtime.segmenter import Segmenter

__all__ = ["INFERENCE_PRECISION", "OPENVINO_INSTALL_HINT", "OpenVinoSegmenter", "openvino_installed",
           "openvino_message"]


class OpenVinoSegmenter(Segmenter):
    """An aspp-deploy ONNX on OpenVINO's CPU plugin, with its preprocessing and post-processing."""

    engine: OvEngine

    def __init__(self, onnx: Union[Path, str], threads: int = 0, cache_dir: Optional[Path] = None) -> None:
        super().__init__(OvEngine(onnx, threads=threads, cache_dir=cache_dir))
