"""The torch-free, onnx-free Jetson runtime: ``Segmenter(engine).predict(image) -> class-id mask``.

Imports NumPy, Pillow, the standard library and ``aspp_deploy.{data.preprocess, trt, errors, io}``;
TensorRT and the CUDA Python package load only when a ``Segmenter`` is made or an engine is built.

* ``Segmenter(engine, cuda="auto")``: ``.predict(image)`` -> ``H x W`` class ids at the image's size,
  ``.predict_batch(images)``, ``.classes``, ``.palette``, ``.preprocess``.
* CPU helpers (no TensorRT): ``load_rgb``, ``preprocess_image``, ``postprocess``, ``class_map``,
  ``colorize``, ``overlay``.
* ``python -m aspp_deploy.runtime {build,plan,segment,selftest}``: see ``__main__``.
"""

from aspp_deploy.runtime.images import class_map, colorize, load_rgb, overlay, postprocess, preprocess_image
from aspp_deploy.runtime.segmenter import Segmenter

__all__ = ["Segmenter", "class_map", "colorize", "load_rgb", "overlay", "postprocess", "preprocess_image"]
