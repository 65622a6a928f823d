"""PyTorch runner: the reference every other backend is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.errors import MissingDependencyError


class TorchRunner(Runner):
    def __init__(self, checkpoint: Path | str | None = None, device: str = "cpu",
                 precision: str = "fp32", channels_last: bool | None = None) -> None:
        import torch

        from aspp_deploy.model.checkpoint import load_checkpoint

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MissingDependencyError("PyTorch sees no CUDA device (CPU build of torch, or no GPU)")
        if precision not in ("fp32", "fp16"):
            raise MissingDependencyError(f"the PyTorch backend runs fp32 or fp16, not {precision}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise MissingDependencyError("PyTorch fp16 inference needs a CUDA device")
        self.ckpt = load_checkpoint(checkpoint)
        self._torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        model = self.ckpt.build().to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.info = RunnerInfo("torch", precision, str(self.device), str(self.ckpt.path),
                               extra={"channels_last": self.channels_last})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()

    def infer_phases(self, batch: np.ndarray) -> dict[str, float] | None:
        if self.device.type != "cuda":
            return None
        torch = self._torch
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).pin_memory()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.inference_mode():
            events[0].record()
            x = host.to(self.device, non_blocking=True).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            events[1].record()
            y = self.model(x).float()
            events[2].record()
            y.to("cpu")
            events[3].record()
        events[3].synchronize()
        return {"h2d": events[0].elapsed_time(events[1]), "compute": events[1].elapsed_time(events[2]),
                "d2h": events[2].elapsed_time(events[3])}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
