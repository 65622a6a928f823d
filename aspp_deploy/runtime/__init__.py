"""The portable runtime core (torch-free, onnx-free, Python 3.8): ``Segmenter(engine).predict(image) -> mask``.

Imports NumPy, Pillow, the standard library and ``aspp_deploy.{errors, io}``; the engine packages
(onnxruntime, openvino, tensorrt and the CUDA Python package) load only when an engine is made or
built. The bundle and the Triton service ship this package whole (``portable.runtime_files``).

* ``manifest``: the typed manifest (``ArtifactEntry``, ``Manifest``, ``EngineManifest``), verified on every read.
* ``preprocess``: ``Preprocess``, the one definition of preprocessing; ``vocab``: the shared words.
* ``engines``: ``OrtEngine``, ``OvEngine``, ``TrtEngine``, each a loader plus ``infer(batch)``.
* ``Segmenter(engine, cuda="auto")``: ``.predict(image)`` -> ``H x W`` class ids at the image's size,
  ``.predict_batch(images)``, ``.classes``, ``.palette``, ``.preprocess``; a path opens a TensorRT
  engine (an ``.onnx``: ONNX Runtime); ``OrtSegmenter`` / ``OpenVinoSegmenter`` name the CPU ones.
* CPU helpers (no TensorRT): ``load_rgb``, ``preprocess_image``, ``postprocess``, ``class_map``,
  ``colorize``, ``overlay``.
* ``python -m aspp_deploy.runtime {build,plan,segment,selftest}``: see ``__main__``.
"""

from aspp_deploy.runtime.images import class_map, colorize, load_rgb, overlay, postprocess, preprocess_image
from aspp_deploy.runtime.segmenter import Segmenter

__all__ = ["Segmenter", "class_map", "colorize", "load_rgb", "overlay", "postprocess", "preprocess_image"]
