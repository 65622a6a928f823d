"""Tiny segmentation models for the bring-your-own-model tests (random weights, small inputs)."""

import torch
from torch import nn
import torch.nn.functional as F

class TinyASPPNet(nn.Module):
    """A tiny DeepLab-like net: stride-8 features, ASPP (1x1, r2, r3, image pool), low-res dict output."""
    def __init__(self, num_classes=4, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.b0 = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=3, dilation=3), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1), nn.ReLU())
        self.project = nn.Conv2d(4 * width, width, 1)
        self.head = nn.Conv2d(width, num_classes, 1)
    def forward(self, x):
        f = self.stem(x)
        p = F.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False)
        y = self.project(torch.cat([self.b0(f), self.b1(f), self.b2(f), p], 1))
        return {"out": self.head(F.relu(y)), "aux": y}

def build(num_classes=4, width=8):
    return TinyASPPNet(num_classes, width)


class Classifier(nn.Module):
    """Not a segmentation model: one score per class for the whole image."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def classifier(num_classes=4):
    return Classifier(num_classes)


def broken(num_classes=4):
    raise RuntimeError("this factory always fails")


class NHWCLowRes(nn.Module):
    """What a model exported elsewhere may look like: NHWC input, low-resolution logits tensor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))["out"]


class TensorOut(nn.Module):
    """The model's ``out`` tensor alone: what TorchScript tracing and torch.export want returned."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["out"]
