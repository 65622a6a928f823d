"""ONNX Runtime runner (CPU; CUDA and TensorRT execution providers when installed): the runtime's
``OrtEngine`` (the one session builder) behind the common ``Runner`` interface."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.errors import InputError
from aspp_deploy.runtime.engines import ort_engine
from aspp_deploy.runtime.engines.ort_engine import PROVIDERS, OrtEngine, providers_for

__all__ = ["PROVIDERS", "OrtRunner", "ort_session"]


def ort_session(path: Path | str, device: str = "cpu", threads: int = 0):
    """An InferenceSession (``ort_engine.ort_session``) on ``device``'s providers; clear errors for a bad file or provider."""
    if not Path(path).is_file():
        raise InputError(f"ONNX model not found: {path}")
    return ort_engine.ort_session(path, threads, providers_for(device))


class OrtRunner(Runner):
    def __init__(self, onnx_path: Path | str, device: str = "cpu", threads: int = 0,
                 precision: str = "fp32", spinning: bool = True) -> None:
        self.engine = OrtEngine(onnx_path, threads=threads, providers=providers_for(device), spinning=spinning)
        self.session = self.engine.session
        self.input_name, self.output_name = self.engine.input_name, self.engine.output_name
        self.info = RunnerInfo("onnxruntime", precision, device, str(onnx_path),
                               outputs_class_ids=self.engine.outputs_class_ids,
                               extra={"providers": self.engine.providers}, input_dtype=self.engine.input_dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.engine.infer(batch)

    def close(self) -> None:
        self.engine.close()
        self.session = None
