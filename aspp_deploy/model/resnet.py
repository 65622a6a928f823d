"""ResNet backbones with atrous (dilated) last stages.

Module names follow torchvision's ``resnet`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...), so a torchvision ResNet or DeepLabV3 backbone state dict
loads into these modules key for key. torchvision itself is not a dependency: its PyPI
wheels do not import beside the CPU build of torch used here, and its ``BasicBlock``
refuses dilation, which the ResNet-18/34 DeepLab backbones need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class _Spec:
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]


RESNET_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _Spec(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _Spec(Bottleneck, (3, 4, 6, 3)),
}


class ResNetBackbone(nn.Module):
    """A ResNet trunk without pooling/fc that returns the ``layer4`` feature map.

    ``output_stride`` 16 replaces the stride of ``layer4`` with dilation 2; 8 also replaces
    that of ``layer3`` (dilation 2 there, 4 in ``layer4``), as DeepLab does.
    """

    def __init__(self, name: str, output_stride: int = 16) -> None:
        super().__init__()
        if name not in RESNET_SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_SPECS)}")
        if output_stride not in (8, 16):
            raise ValueError(f"output stride must be 8 or 16, not {output_stride}")
        spec = RESNET_SPECS[name]
        dilate3, dilate4 = (True, True) if output_stride == 8 else (False, True)
        self._inplanes, self._dilation = 64, 1
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(spec.block, 64, spec.layers[0])
        self.layer2 = self._make_layer(spec.block, 128, spec.layers[1], stride=2)
        self.layer3 = self._make_layer(spec.block, 256, spec.layers[2], stride=2, dilate=dilate3)
        self.layer4 = self._make_layer(spec.block, 512, spec.layers[3], stride=2, dilate=dilate4)
        self.out_channels = 512 * spec.block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self._inplanes, planes, stride, previous_dilation, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
