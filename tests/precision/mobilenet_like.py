"""A small MobileNetV3-style person segmenter for the INT8 tests: depthwise convolutions, HardSwish,
squeeze-excitation (GlobalAveragePool -> Conv -> ReLU -> Conv -> HardSigmoid -> Mul), inverted
residual blocks, an optional self-attention block (MatMul), one sigmoid-style channel turned into
2 classes (background, person). Random weights: a graph to quantize, not a model to judge."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

SIDE = 64
CLASSES = ["background", "person"]


class SE(nn.Module):
    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class Block(nn.Module):
    def __init__(self, cin: int, cexp: int, cout: int, stride: int, se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, 3, stride, 1, groups=cexp, bias=False), nn.BatchNorm2d(cexp),
                                nn.Hardswish())
        self.se = SE(cexp) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class Attention(nn.Module):
    """One self-attention layer over the stride-16 feature map (MatMul / Gemm-style Linear layers)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.qkv, self.out, self.c = nn.Linear(c, 3 * c), nn.Linear(c, c), c

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).split(self.c, dim=-1)
        a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        return x + self.out(a @ v).transpose(1, 2).reshape(n, c, h, w)


class MobileNetLike(nn.Module):
    def __init__(self, attention: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(Block(16, 32, 16, 1, False), Block(16, 48, 24, 2, False),
                                    Block(24, 64, 24, 1, True), Block(24, 72, 32, 2, True),
                                    Block(32, 96, 32, 1, True), Block(32, 96, 32, 1, True))
        self.attention = Attention(32) if attention else nn.Identity()
        self.head = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU(), nn.Conv2d(16, 1, 1))

    def forward(self, x):
        logit = self.head(self.attention(self.blocks(self.stem(x))))
        logit = F.interpolate(logit, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([-logit, logit], 1)  # one sigmoid channel as 2 classes (what import makes of it)


def build(seed: int = 0, attention: bool = False) -> MobileNetLike:
    torch.manual_seed(seed)
    model = MobileNetLike(attention).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def export(path: Path, seed: int = 0, attention: bool = False) -> Path:
    """The model as an FP32 ONNX with its manifest entry (what `aspp-deploy import` writes)."""
    import onnx

    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.data.voc import voc_palette
    from aspp_deploy.export.manifest import embed, update_sidecar

    path.parent.mkdir(parents=True, exist_ok=True)
    model = build(seed, attention)
    torch.onnx.export(model, (torch.zeros(1, 3, SIDE, SIDE),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    entry = {"kind": "onnx", "file": path.name, "precision": "fp32", "outputs_class_ids": False,
             "preprocess": Preprocess(SIDE, SIDE).to_dict(), "classes": CLASSES,
             "palette": [list(c) for c in voc_palette(len(CLASSES))], "model": {"note": "MobileNetV3-like test model"}}
    embed(m, entry)
    onnx.save(m, str(path))
    update_sidecar(path.parent, path.name, entry)
    return path
