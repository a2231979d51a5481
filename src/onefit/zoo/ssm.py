"""A small selective state-space (Mamba-style) classifier in plain PyTorch: an image read as a
sequence of rows, a sequential scan (no CUDA kernels).

Each block (Gu & Dao 2023, "Mamba", section 3.2, Algorithm 2, without the local convolution): the
input is projected to ``x`` and a gate ``z``; ``x`` gives the selective step ``delta`` (softplus)
and the input and output maps ``B``, ``C``; with ``A = -exp(A_log)`` diagonal, the state
``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t`` and ``y_t = C_t h_t + D x_t``, gated by
``silu(z)``, projected back, added to the block's input.

>>> model = ssm_classifier(rows=8, width=8, dim=16, state=4, blocks=1)
>>> tuple(model(torch.randn(2, 1, 8, 8)).shape)
(2, 10)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelectiveSSM(nn.Module):
    def __init__(self, dim: int, state: int, expand: int = 2):
        super().__init__()
        inner = dim * expand
        self.norm = nn.LayerNorm(dim)
        self.inp = nn.Linear(dim, 2 * inner)  # x and the gate z
        self.select = nn.Linear(inner, 1 + 2 * state)  # delta (one per step), B and C
        self.delta = nn.Linear(1, inner)  # the step, broadcast to every channel
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.out = nn.Linear(inner, dim)
        self.state = state

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: (B, T, dim)
        x, z = self.inp(self.norm(u)).chunk(2, -1)  # (B, T, inner) each
        x = F.silu(x)
        d, b, c = self.select(x).split([1, self.state, self.state], -1)  # (B, T, 1), (B, T, N), (B, T, N)
        delta = F.softplus(self.delta(d))  # (B, T, inner)
        A = -torch.exp(self.A_log)  # (inner, N)
        h = torch.zeros(u.shape[0], x.shape[-1], self.state, dtype=u.dtype, device=u.device)  # (B, inner, N)
        ys = []
        for t in range(u.shape[1]):  # the sequential scan
            h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
            ys.append((h * c[:, t, None, :]).sum(-1) + self.D * x[:, t])  # (B, inner)
        y = torch.stack(ys, 1) * F.silu(z)  # (B, T, inner)
        return u + self.out(y)


class SSMClassifier(nn.Module):
    def __init__(self, rows: int, width: int, dim: int, state: int, blocks: int, classes: int):
        super().__init__()
        self.rows, self.width = rows, width
        self.embed = nn.Linear(width, dim)
        self.blocks = nn.Sequential(*[SelectiveSSM(dim, state) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, rows, width), one row a step
        h = self.blocks(self.embed(x.reshape(x.shape[0], self.rows, self.width)))  # (B, rows, dim)
        return self.head(self.norm(h).mean(1))  # (B, classes)


def ssm_classifier(rows: int = 8, width: int = 8, dim: int = 32, state: int = 8, blocks: int = 2,
                   classes: int = 10) -> SSMClassifier:
    """A selective state-space classifier of 1 x rows x width images (8 x 8 digits; 28 x 28 MNIST)."""
    return SSMClassifier(rows, width, dim, state, blocks, classes)
