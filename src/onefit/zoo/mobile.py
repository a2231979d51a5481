"""Mobile architectures: MobileNetV2 (inverted residuals, depthwise) and a MobileNetV3-style
network (squeeze-and-excitation, hardswish), sized for small images."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: channel gates from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(8, channels // reduction), 1)
        self.expand = nn.Conv2d(max(8, channels // reduction), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * nn.functional.hardsigmoid(gate)


class InvertedResidual(nn.Module):
    """Sandler et al. 2018: 1x1 expand, depthwise k x k (3 by default), optional SE, 1x1 project;
    residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False, act: type = nn.ReLU6,
                 kernel: int = 3):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), act())
        self.se = SqueezeExcite(hidden) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    def __init__(self, in_channels: int, stages: tuple, classes: int, se: bool, act: type, stem: int = 16,
                 kernel: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), act())
        blocks, cin = [], stem
        for cout, n, stride, expand in stages:
            blocks.append(nn.Sequential(*[InvertedResidual(cin if i == 0 else cout, cout, stride if i == 0 else 1,
                                                           expand, se, act, kernel) for i in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 4 * cin, 1, bias=False), nn.BatchNorm2d(4 * cin), act())
        self.classifier = nn.Linear(4 * cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.stages(self.stem(x)))
        return self.classifier(x.mean((2, 3)))  # (B, C)


def mobilenet_v2(in_channels: int = 1, classes: int = 10) -> MobileNet:
    # (out channels, blocks, first stride, expansion)
    return MobileNet(in_channels, ((16, 2, 1, 4), (24, 3, 2, 4), (32, 3, 2, 4)), classes, se=False, act=nn.ReLU6)


def mobilenet_v3(in_channels: int = 1, classes: int = 10, kernel: int = 3) -> MobileNet:
    """``kernel``: the depthwise kernel size (7 for a family with kernel choices 3, 5, 7)."""
    return MobileNet(in_channels, ((16, 2, 1, 4), (24, 3, 2, 4), (40, 2, 2, 4)), classes, se=True, act=nn.Hardswish,
                     kernel=kernel)
