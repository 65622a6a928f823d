"""PyTorch runner: the reference every other backend is compared with.

It runs any model source (``aspp_deploy.model.sources``) through the same output adapter the export
uses, so its logits are what the ONNX was verified against."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aspp_deploy.backends.base import Runner, RunnerInfo
from aspp_deploy.errors import MissingDependencyError
from aspp_deploy.runtime.preprocess import Preprocess

if TYPE_CHECKING:
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.model.sources import ModelSource, OutputPlan
    from aspp_deploy.spec import ModelSpec, ResolvedSpec


class TorchRunner(Runner):
    def __init__(self, checkpoint: Path | str | None = None, device: str = "cpu",
                 precision: str = "fp32", channels_last: bool | None = None,
                 source: "ModelSource | None" = None, preprocess: "Preprocess | None" = None,
                 adapted: "tuple[Any, OutputPlan] | None" = None, trust_code: bool | None = None) -> None:
        """``adapted``: the (module, plan) ``resolve_for_source`` already made for this source and
        preprocessing, so the model is not probed a second time. ``trust_code``: load a TorchScript or
        torch.export ``checkpoint`` (``--trust-code``; None: as ``sources.code_trusted`` says)."""
        import torch

        from aspp_deploy.model.sources import adapt, load_source

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise MissingDependencyError("PyTorch sees no CUDA device (CPU build of torch, or no GPU)")
        if precision not in ("fp32", "fp16"):
            raise MissingDependencyError(f"the PyTorch backend runs fp32 or fp16, not {precision}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise MissingDependencyError("PyTorch fp16 inference needs a CUDA device")
        self.source = source or load_source(Path(checkpoint) if checkpoint is not None else None,
                                            trust_code=trust_code)
        self.preprocess = preprocess or self.source.preprocess or Preprocess()
        self.classes = self.source.classes
        module, plan = adapted or adapt(self.source, self.preprocess)
        self._torch = torch
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.channels_last = (self.device.type == "cuda" if channels_last is None else channels_last) \
            and self.preprocess.layout == "NCHW"
        if self.device.type != "cpu" or self.dtype != torch.float32 or self.channels_last:
            # Module.to() works in place: the source's module, shared with the other rows of `compare` and
            # with the exporter, must stay on the CPU in FP32 (its FP16 CUDA row once failed: the FP32
            # CUDA row had moved the shared weights to the GPU, and the probe fed them a CPU tensor).
            module = copy.deepcopy(module)
        model = module.to(self.device, self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        artifact = str(self.source.files[0]) if self.source.files else self.source.label
        self.info = RunnerInfo("torch", precision, str(self.device), artifact,
                               outputs_class_ids=plan.kind == "class_ids",
                               extra={"channels_last": self.channels_last, "source": self.source.label})

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self.model(x)
            return (y.float() if y.is_floating_point() else y).cpu().numpy()

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


def open_torch_source(source_options: tuple, spec: "ModelSpec", device: str = "cpu",
                      threads: int = 0, trust_code: bool | None = None) -> "tuple[TorchRunner, ResolvedSpec]":
    """The PyTorch runner for ``(checkpoint, arch, arch_args, weights)`` fed as ``spec`` resolves, and
    that resolved spec (what eval and predict need to preprocess, name classes and colour masks).
    ``trust_code``: as ``load_source`` takes it (``--trust-code``)."""
    import torch

    from aspp_deploy.model.sources import load_source, resolve_for_source

    if threads:
        torch.set_num_threads(threads)
    source = load_source(*source_options, trust_code=trust_code)
    resolved, module, plan = resolve_for_source(source, spec)
    runner = TorchRunner(device=device, source=source, preprocess=resolved.preprocess, adapted=(module, plan))
    return runner, resolved
