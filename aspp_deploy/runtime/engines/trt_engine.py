"""TensorRT: an engine built by ``aspp-deploy build`` (``aspp_deploy.runtime.trt.runtime.TrtRunner`` does the
device work: checks against the engine manifest, buffers, streams, CUDA graphs). TensorRT and the
CUDA Python package are imported when an engine is made. Python 3.8 syntax."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.engines.base import Engine, feed_array
from aspp_deploy.runtime.manifest import EngineManifest


class TrtEngine(Engine):
    """A TensorRT engine file and its ``<engine>.json`` manifest."""

    kind = "tensorrt"

    def __init__(self, engine: Union[str, Path], cuda: str = "auto", use_cuda_graph: bool = False) -> None:
        from aspp_deploy.runtime.trt.runtime import TrtRunner

        self.path = Path(engine)
        self.runner = TrtRunner(self.path, cuda=cuda, use_cuda_graph=use_cuda_graph)
        self.typed = self.runner.typed  # type: EngineManifest
        self.version = self.typed.tensorrt_version or "?"
        self.input_names = list(self.runner.input_names)
        self.output_names = list(self.runner.output_names)
        if not self.runner.inputs:
            raise InputError("{} has no inputs: a segmentation engine has one image input".format(self.path))
        profile = self.runner.inputs[0].profile
        assert profile is not None
        self.profile = profile
        self.min_batch, self.max_batch = int(profile[0][0]), int(profile[2][0])
        self.outputs_class_ids = bool(self.runner.outputs) and self.runner.outputs[0].dtype.kind in "iu"
        self.input_dtype = str(self.runner.inputs[0].dtype)

    def takes(self, image_shape: Sequence[int]) -> bool:
        lo, _, hi = self.profile
        return len(hi) == 4 and all(int(a) <= int(w) <= int(b) for a, w, b in zip(lo[1:], image_shape, hi[1:]))

    @property
    def description(self) -> str:
        """``TensorRT 10.3.0: engines/model.fp16.engine (fp16)``."""
        return "TensorRT {}: {} ({})".format(self.version, self.path, self.typed.precision or "?")

    def manifest(self) -> EngineManifest:
        return self.typed

    def enter_thread(self) -> None:
        self.runner.cuda.enter_thread()

    def leave_thread(self) -> None:
        self.runner.cuda.leave_thread()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer({self.input_name: feed_array(batch)})[self.output_name]

    def infer_phases(self, batch: np.ndarray) -> Any:
        """Milliseconds of host-to-device copy, compute and device-to-host copy of one run (device events)."""
        t = self.runner.time({self.input_name: feed_array(batch)}, warmup=0, iters=1)
        return {"h2d": t.h2d_ms[0], "compute": t.compute_ms[0], "d2h": t.d2h_ms[0]}

    def close(self) -> None:
        self.runner.close()
