"""``OrtSegmenter(onnx).predict(image) -> class-id mask``: the runtime on ONNX Runtime, for a machine
without TensorRT (a CPU box, a Jetson before its engine is built, a laptop checking the bundle).

``Segmenter(OrtEngine(onnx, threads, providers))`` under its own name: the same API (``predict``,
``predict_batch``, ``classes``, ``palette``, ``preprocess``, ``min_batch``/``max_batch``,
``infer_raw``), fed from the ONNX's own aspp-deploy manifest (embedded, read through ONNX Runtime's
model metadata, else the ``manifest.json`` beside it). ONNX Runtime is imported when an
``OrtSegmenter`` is made, never before; torch and onnx are never imported. Python 3.8 syntax.

Example::

    from aspp_deploy.runtime.ort_segmenter import OrtSegmenter

    with OrtSegmenter("models/model.onnx") as seg:
        mask = seg.predict("street.jpg")      # H x W uint8 class ids at the image's own size
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

from aspp_deploy.runtime.engines.ort_engine import (ORT_INSTALL_HINT, OrtEngine, import_onnxruntime,
                                                    onnxruntime_installed)
from aspp_deploy.runtime.segmenter import DEFAULT_DYNAMIC_BATCH, Segmenter

__all__ = ["DEFAULT_DYNAMIC_BATCH", "ORT_INSTALL_HINT", "OrtSegmenter", "import_onnxruntime", "onnxruntime_installed"]


class OrtSegmenter(Segmenter):
    """An aspp-deploy ONNX on ONNX Runtime, with its preprocessing and post-processing."""

    engine: OrtEngine

    def __init__(self, onnx: Union[Path, str], threads: int = 0, providers: Optional[List[str]] = None,
                 spinning: bool = True) -> None:
        super().__init__(OrtEngine(onnx, threads=threads, providers=providers, spinning=spinning))

    @property
    def providers(self) -> List[str]:
        return self.engine.providers
