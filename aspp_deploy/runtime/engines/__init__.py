"""The inference engines of the portable runtime: each a loader plus ``infer(batch) -> output``.

* ``OrtEngine`` (ONNX Runtime: the one session builder of the project), ``OvEngine`` (OpenVINO's CPU
  plugin: the one compile configuration) and ``TrtEngine`` (a TensorRT engine built by
  ``aspp-deploy build``), all behind ``Engine`` (``engines.base``).
* ``open_engine(path)`` picks one from the file: an ONNX on ONNX Runtime, anything else as a
  TensorRT engine (the documented ``Segmenter("model.engine")``).

The engine packages (onnxruntime, openvino, tensorrt) are imported when an engine is made, never
before; torch and onnx never. Python 3.8 syntax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

from aspp_deploy.runtime.engines.base import Engine, ManifestView

__all__ = ["Engine", "ManifestView", "open_engine"]


def open_engine(path: Union[str, Path], **options: Any) -> Engine:
    """The engine for the file at ``path``: ``.onnx`` on ONNX Runtime, anything else as a TensorRT
    engine (``cuda`` and ``use_cuda_graph`` go to ``TrtEngine``, ``threads`` and ``providers`` to ``OrtEngine``)."""
    if Path(path).suffix.lower() == ".onnx":
        from aspp_deploy.runtime.engines.ort_engine import OrtEngine

        return OrtEngine(path, **options)
    from aspp_deploy.runtime.engines.trt_engine import TrtEngine

    return TrtEngine(path, **options)
