"""A 1-D temporal CNN: a strided stem, a residual stage of dilated convolutions, global pooling.

``padding=False`` builds the streaming form: no padding in time, each residual added to the
newest positions of its block's output (the input cropped from the left), so every output
depends only on frames inside the clip and ``onefit.continual`` can run it one frame at a time.
"""

from __future__ import annotations

import torch
from torch import nn


class TemporalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, padding: bool = True):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=dilation if padding else 0, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.crop = 0 if padding else 2 * dilation  # frames the unpadded convolution consumes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x[..., self.crop:] + self.bn(self.conv(x)))


class TemporalCNN(nn.Module):
    def __init__(self, in_channels: int, channels: int, blocks: int, classes: int, stride: int = 2,
                 padding: bool = True):
        super().__init__()
        self.stem = nn.Conv1d(in_channels, channels, 5, stride=stride, padding=2 if padding else 0)
        self.blocks = nn.Sequential(*[TemporalBlock(channels, 2**i, padding) for i in range(blocks)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, in_channels, T)
        return self.head(self.blocks(torch.relu(self.stem(x))).amax(-1))  # max over time: (B, channels)


def temporal_cnn(in_channels: int = 4, channels: int = 32, blocks: int = 4, classes: int = 5, stride: int = 2,
                 padding: bool = True) -> TemporalCNN:
    return TemporalCNN(in_channels, channels, blocks, classes, stride, padding)
