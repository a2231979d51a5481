"""A plain VGG-style CNN and a ResNet with basic blocks, sized for small images.

>>> tuple(resnet(widths=(8, 16), blocks=(1, 1))(torch.randn(2, 1, 8, 8)).shape)
(2, 10)
>>> tuple(plain_cnn()(torch.randn(2, 1, 8, 8)).shape)
(2, 10)
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def plain_cnn(in_channels: int = 1, widths: tuple = (32, 64), blocks: int = 2, classes: int = 10) -> nn.Module:
    """Stages of ``blocks`` conv-bn-relu layers each; a stride-2 conv opens every stage after the first."""
    stages, cin = [], in_channels
    for i, width in enumerate(widths):
        layers = [_conv_bn(cin, width, 1 if i == 0 else 2)] + [_conv_bn(width, width) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
        cin = width
    return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class BasicBlock(nn.Module):
    """He et al. 2016: two 3x3 convs and a shortcut, a 1x1 conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """He et al. 2016: 1x1 reduce, 3x3, 1x1 expand (x4), and a shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, widths: tuple, blocks: tuple, classes: int, stem_stride: int = 1,
                 bottleneck: bool = False):
        super().__init__()
        block, grow = (Bottleneck, Bottleneck.expansion) if bottleneck else (BasicBlock, 1)
        self.stem = _conv_bn(in_channels, widths[0], stem_stride)
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(block(cin, width, stride), *[block(width * grow, width) for _ in range(n - 1)]))
            cin = width * grow
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x.mean((2, 3)))  # global average pool: (B, C)


def resnet(
    in_channels: int = 1, widths: tuple = (32, 64), blocks: tuple = (3, 3), classes: int = 10, stem_stride: int = 1,
    bottleneck: bool = False,
) -> ResNet:
    """A ResNet with one stage per width (basic blocks, or bottleneck blocks of 4x expansion);
    stages after the first halve the resolution."""
    return ResNet(in_channels, tuple(widths), tuple(blocks), classes, stem_stride, bottleneck)
