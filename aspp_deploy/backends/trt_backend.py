"""TensorRT runner: the torch-free ``aspp_deploy.trt.runtime.TrtRunner`` behind the common interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo


class TrtBackendRunner(Runner):
    def __init__(self, engine: Path | str, use_cuda_graph: bool = False) -> None:
        from aspp_deploy.trt.runtime import TrtRunner, read_engine_manifest

        manifest = read_engine_manifest(engine)
        self.runner = TrtRunner(engine, use_cuda_graph=use_cuda_graph)
        self.input_name = self.runner.input_names[0]
        self.output_name = self.runner.output_names[0]
        out_dtype = next((t.get("dtype", "") for t in manifest.get("io", [])
                          if t.get("name") == self.output_name), "")
        self.info = RunnerInfo("trt", str(manifest.get("precision", "")), "cuda", str(engine),
                               outputs_class_ids=str(out_dtype).lower() in ("int32", "uint8", "int64"),
                               extra={"tensorrt": manifest.get("tensorrt_version"), "gpu": manifest.get("gpu", {}).get("name")})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer({self.input_name: batch})[self.output_name]

    def infer_phases(self, batch: np.ndarray) -> dict[str, float] | None:
        t = self.runner.time({self.input_name: batch}, warmup=0, iters=1)
        return {"h2d": t.h2d_ms[0], "compute": t.compute_ms[0], "d2h": t.d2h_ms[0]}

    def close(self) -> None:
        self.runner.close()
