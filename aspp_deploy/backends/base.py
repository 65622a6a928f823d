"""The one runner interface that eval, bench and compare talk to.

A runner takes a preprocessed float32 NCHW batch and returns logits (N, C, H, W) float32,
or class ids (N, H, W) when the artifact ends in an ArgMax; a fused-I/O artifact takes uint8
N x H x W x 3 pixels instead (``RunnerInfo.input_dtype``) and returns uint8 class ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.engines.base import Engine
from aspp_deploy.runtime.images import class_map
from aspp_deploy.runtime.preprocess import Preprocess


@dataclass
class RunnerInfo:
    backend: str
    precision: str
    device: str
    artifact: str
    outputs_class_ids: bool = False
    extra: dict = field(default_factory=dict)
    input_dtype: str = "float32"  # "uint8": the artifact takes pixels (fused I/O)


def runner_input(runner: "Runner", pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """What ``runner``'s model takes for a batch of uint8 ``pixels`` (N x H x W x 3, the model's channel
    order, as ``pre.fused()`` makes them): the pixels for a fused-I/O model, else their normalised
    float32 input (``Preprocess.from_pixels``: bit for bit what ``Preprocess`` gives an unfused model)."""
    return pixels if runner.info.input_dtype == "uint8" else pre.from_pixels(pixels)


class Runner(ABC):
    """Load once, ``infer`` many times; usable as a context manager."""

    info: RunnerInfo

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) -> float32 logits (N, C, H, W) or integer class ids (N, H, W)."""

    def infer_phases(self, batch: np.ndarray) -> dict[str, float] | None:
        """GPU backends: milliseconds of host-to-device copy, compute and device-to-host copy
        for one call, from device events. None where there is no such split (CPU)."""
        return None

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on the CPU)."""

    def close(self) -> None:
        """Release the session / engine / device memory."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def class_ids(output: np.ndarray, outputs_class_ids: bool) -> np.ndarray:
    """Turn a runner's output into (N, H, W) class ids."""
    shape = tuple(getattr(output, "shape", ()))
    if len(shape) != 4 and not (outputs_class_ids and len(shape) == 3):
        raise InputError(f"the model's output has shape {list(shape)}: a segmentation model outputs N x C x H x W "
                         "scores (or N x H x W class ids), not a classifier's or detector's output")
    if outputs_class_ids:
        return output.reshape(output.shape[0], *output.shape[-2:]).astype(np.int64)
    if np.asarray(output).dtype.kind == "f" and shape[0] > 0 and shape[1] <= 256:  # a class plane at a time
        return np.stack([class_map(scores) for scores in output]).astype(np.int64)
    return output.argmax(axis=1)


@dataclass
class ModelFacts:
    """What feeding a model and reading its output needs, wherever it was read from (a manifest, or a
    PyTorch source's resolved spec): what a ``Segmenter`` reads from its engine's manifest."""

    preprocess: Preprocess
    classes: List[str]
    palette: List[List[int]]

    def to_dict(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess.to_dict(), "classes": list(self.classes),
                "palette": [list(c) for c in self.palette]}


class RunnerEngine(Engine):
    """A ``Runner`` (any backend of the registry, PyTorch included) as a runtime ``Engine``, so that a
    ``Segmenter`` can run it: ``static_batch`` is the batch the artifact is fixed to (None: any)."""

    def __init__(self, runner: Runner, facts: ModelFacts, static_batch: Optional[int] = None) -> None:
        self.runner, self.facts = runner, facts
        self.kind = runner.info.backend
        self.path = Path(runner.info.artifact)
        self.input_names, self.output_names = ["input"], ["output"]
        if static_batch is not None:
            self.min_batch = self.max_batch = int(static_batch)
        self.outputs_class_ids = runner.info.outputs_class_ids

    @property
    def description(self) -> str:
        return f"{self.runner.info.backend} {self.runner.info.precision} on {self.runner.info.device}: {self.path}"

    def manifest(self) -> ModelFacts:
        return self.facts

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer(batch)

    def close(self) -> None:
        self.runner.close()
