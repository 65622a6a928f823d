"""A PyTorch runner leaves the model source it was given as it found it: ``compare`` opens several
runners (CPU FP32, CUDA FP32, CUDA FP16) on one source, and ``Module.to`` works in place."""

from __future__ import annotations

import numpy as np
import torch

from aspp_deploy.backends.torch_backend import TorchRunner
from aspp_deploy.model.sources import load_source


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_a_channels_last_runner_does_not_change_the_shared_source(tiny_checkpoint):
    source = load_source(tiny_checkpoint)
    before = [w.detach().clone() for w in _weights(source.module)]
    plain = TorchRunner(source=source)
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)
    reference = plain.infer(x)
    other = TorchRunner(source=source, channels_last=True)
    assert other.channels_last and other.model is not source.module
    assert all(w.is_contiguous() and w.dtype == torch.float32 and w.device.type == "cpu"
               for w in _weights(source.module)), "the runner converted the source's weights in place"
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(source.module)))
    # a third runner on the same source probes and runs it as the first did
    again = TorchRunner(source=source)
    np.testing.assert_allclose(again.infer(x), reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(other.infer(x), reference, rtol=1e-4, atol=1e-4)
    assert plain.model is source.module  # the plain CPU FP32 runner shares the source's module: no copy
