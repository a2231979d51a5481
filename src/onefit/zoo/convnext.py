"""A ConvNeXt-style network (Liu et al. 2022): depthwise 7x7, LayerNorm over channels in
channels-last layout, inverted MLP, residual; sized for small images."""

from __future__ import annotations

import torch
from torch import nn


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, expand: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, expand * dim)
        self.pwconv2 = nn.Linear(expand * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(nn.functional.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXt(nn.Module):
    def __init__(self, in_channels: int, dims: tuple, depths: tuple, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, dims[0], 2, stride=2)
        stages, cin = [], dims[0]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            down = nn.Identity() if i == 0 else nn.Conv2d(cin, dim, 2, stride=2)
            stages.append(nn.Sequential(down, nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)])))
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cin)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean((2, 3))))  # (B, C)


def convnext(in_channels: int = 1, dims: tuple = (16, 32), depths: tuple = (2, 2), classes: int = 10) -> ConvNeXt:
    return ConvNeXt(in_channels, tuple(dims), tuple(depths), classes)
