"""A small sequence classifier on torch's own ``nn.MultiheadAttention`` (pre-norm blocks)."""

from __future__ import annotations

import torch
from torch import nn


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SequenceEncoder(nn.Module):
    def __init__(self, features: int, dim: int, depth: int, heads: int, classes: int, readout: str = "mean"):
        super().__init__()
        if readout not in ("mean", "last"):
            raise ValueError(f"readout must be 'mean' (over time) or 'last' (the newest position), got {readout!r}")
        self.readout = readout
        self.embed = nn.Linear(features, dim)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, features)
        h = self.blocks(self.embed(x))
        return self.head(h.mean(1) if self.readout == "mean" else h[:, -1])  # (B, dim)


def sequence_encoder(features: int = 8, dim: int = 32, depth: int = 3, heads: int = 4, classes: int = 5,
                     readout: str = "mean"):
    """``readout="last"``: classify from the newest position, which lets a one-block encoder
    stream (``onefit.continual``: single-output attention)."""
    return SequenceEncoder(features, dim, depth, heads, classes, readout)
