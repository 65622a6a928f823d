"""ONNX Runtime runner (CPU; CUDA and TensorRT execution providers when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.errors import InputError, MissingDependencyError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def ort_session(path: Path | str, device: str = "cpu", threads: int = 0):
    """An InferenceSession with full graph optimisation; clear errors for a bad file or provider."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model not found: {path}")
    if device not in PROVIDERS:
        raise InputError(f"unknown ONNX Runtime device {device!r}; choose one of {sorted(PROVIDERS)}")
    wanted = PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        raise MissingDependencyError(f"ONNX Runtime here has no {wanted} (installed: "
                                     f"{', '.join(ort.get_available_providers())})")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=PROVIDERS[device])
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ONNX Runtime cannot load {path}: {first}") from None


class OrtRunner(Runner):
    def __init__(self, onnx_path: Path | str, device: str = "cpu", threads: int = 0,
                 precision: str = "fp32") -> None:
        self.session = ort_session(onnx_path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.info = RunnerInfo("onnxruntime", precision, device, str(onnx_path),
                               outputs_class_ids="int" in out.type or "uint8" in out.type,
                               extra={"providers": self.session.get_providers()})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # InvalidArgument & co: the input does not fit the graph
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            expected = [d if isinstance(d, int) else "?" for d in self.session.get_inputs()[0].shape]
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{self.info.artifact} takes input {expected}, was given {list(batch.shape)} "
                             f"{batch.dtype} from its manifest's preprocessing: the file and its manifest disagree "
                             f"(export it again) [{first[:200]}]") from None

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
