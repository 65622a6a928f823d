"""DeepLabV3 (and the DeepLab v2 ASPP form) over a ResNet backbone.

Module names mirror torchvision's ``deeplabv3_resnet50``: ``backbone.layerN...``,
``classifier.0.convs.K...`` (the ASPP branches: 0 is the 1x1 conv, 1..n the atrous 3x3
convs, the last one the image pooling branch), ``classifier.0.project...``, then
``classifier.1..4`` (3x3 conv, BN, ReLU, 1x1 classifier). See ``docs/torchvision-mapping.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from aspp_deploy.model.resnet import ResNetBackbone


def atrous_rates_for(output_stride: int) -> tuple[int, ...]:
    """DeepLabV3's rates: 6/12/18 at output stride 16, doubled at 8."""
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the architecture; stored in every checkpoint."""

    num_classes: int
    backbone: str = "resnet18"
    output_stride: int = 16
    atrous_rates: tuple[int, ...] = field(default=())
    aspp_depth: int = 256
    head: str = "v3"  # "v3" (parallel branches + BN + image pooling) or "v2" (summed atrous convs)
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if not self.atrous_rates:
            object.__setattr__(self, "atrous_rates", atrous_rates_for(self.output_stride))
        object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
        if self.head not in ("v2", "v3"):
            raise ValueError(f"head must be 'v2' or 'v3', not {self.head!r}")
        if self.num_classes < 2:
            raise ValueError("num_classes must be at least 2")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["atrous_rates"] = list(self.atrous_rates)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "atrous_rates" in known:
            known["atrous_rates"] = tuple(known["atrous_rates"])
        return cls(**known)


class ASPPConv(nn.Sequential):
    """3x3 atrous conv, BN, ReLU; padding = rate keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, rate: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool, 1x1 conv, BN, ReLU, bilinear upsample."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3 ASPP: 1x1 branch, one 3x3 atrous branch per rate, image pooling; concat, project."""

    def __init__(self, in_channels: int, rates: tuple[int, ...], out_channels: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )]
        branches += [ASPPConv(in_channels, out_channels, r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv-BN-ReLU, 1x1 classifier (torchvision's ``DeepLabHead``)."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...], depth: int,
                 dropout: float) -> None:
        super().__init__(
            ASPP(in_channels, rates, depth, dropout),
            nn.Conv2d(depth, depth, 3, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            nn.ReLU(),
            nn.Conv2d(depth, num_classes, 1),
        )


class ASPPv2(nn.Module):
    """DeepLab v2 ASPP: parallel 3x3 atrous convs straight to class scores, summed, no BN."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV3(nn.Module):
    """Backbone + ASPP head; logits are upsampled bilinearly to the input size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetBackbone(config.backbone, config.output_stride)
        channels = self.backbone.out_channels
        if config.head == "v3":
            self.classifier: nn.Module = DeepLabHead(
                channels, config.num_classes, config.atrous_rates, config.aspp_depth, config.dropout)
        else:
            self.classifier = nn.Sequential(ASPPv2(channels, config.num_classes, config.atrous_rates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_model(config: ModelConfig) -> DeepLabV3:
    return DeepLabV3(config)


def feature_size(size: int, output_stride: int) -> int:
    """Spatial size of the backbone output for an input side of ``size`` pixels.

    conv1 (k7 s2 p3) and maxpool (k3 s2 p1) each give ceil(n/2); every stride-2 stage
    (k3 s2 p1 or k1 s2) gives ceil(n/2) again; dilated stages keep the size.
    """
    n = size
    for _ in range({16: 4, 8: 3}[output_stride]):
        n = (n + 1) // 2
    return n
