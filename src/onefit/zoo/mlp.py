from __future__ import annotations

from torch import nn


def mlp(in_features: int = 64, hidden: int = 256, layers: int = 2, classes: int = 10, norm: bool = True) -> nn.Sequential:
    """Flatten, then ``layers`` x (Linear, BatchNorm1d, ReLU), then a Linear classifier."""
    mods: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden) if norm else nn.Identity(), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, classes))
    return nn.Sequential(*mods)
