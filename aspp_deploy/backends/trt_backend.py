"""TensorRT runner: the runtime's ``TrtEngine`` (over the torch-free ``aspp_deploy.runtime.trt.runtime.TrtRunner``)
behind the common interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.runtime.engines.trt_engine import TrtEngine
from aspp_deploy.runtime.manifest import EngineManifest


class TrtBackendRunner(Runner):
    def __init__(self, engine: Path | str, use_cuda_graph: bool = False) -> None:
        EngineManifest.read(engine)  # an engine without its preprocessing recorded is refused before TensorRT loads
        self.engine = TrtEngine(engine, use_cuda_graph=use_cuda_graph)
        self.runner = self.engine.runner
        self.input_name, self.output_name = self.engine.input_name, self.engine.output_name
        manifest = self.engine.typed
        gpu = manifest.extra.get("gpu")
        self.info = RunnerInfo("trt", manifest.precision.value if manifest.precision else "", "cuda", str(engine),
                               outputs_class_ids=self.engine.outputs_class_ids,
                               extra={"tensorrt": manifest.tensorrt_version,
                                      "gpu": gpu.get("name") if isinstance(gpu, dict) else None},
                               input_dtype=self.engine.input_dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(batch)

    def infer_phases(self, batch: np.ndarray) -> dict[str, float] | None:
        return self.engine.infer_phases(batch)

    def close(self) -> None:
        self.engine.close()
