"""A 1-D temporal CNN: a strided stem, a residual stage of dilated convolutions, global pooling."""

from __future__ import annotations

import torch
from torch import nn


class TemporalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class TemporalCNN(nn.Module):
    def __init__(self, in_channels: int, channels: int, blocks: int, classes: int):
        super().__init__()
        self.stem = nn.Conv1d(in_channels, channels, 5, stride=2, padding=2)
        self.blocks = nn.Sequential(*[TemporalBlock(channels, 2**i) for i in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, in_channels, T)
        return self.head(self.blocks(torch.relu(self.stem(x))).amax(-1))  # max over time: (B, channels)


def temporal_cnn(in_channels: int = 4, channels: int = 32, blocks: int = 4, classes: int = 5) -> TemporalCNN:
    return TemporalCNN(in_channels, channels, blocks, classes)
