"""Elastic depth: a stage of repeated blocks that runs only its first ``active_depth`` blocks."""

from __future__ import annotations

import torch
from torch import nn


class ElasticSequential(nn.Sequential):
    active_depth: int | None = None  # None: every block

    @classmethod
    def from_plain(cls, plain: nn.Sequential) -> "ElasticSequential":
        stage = cls()
        for name, child in plain.named_children():
            stage.add_module(name, child)
        return stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = len(self) if self.active_depth is None else self.active_depth
        for block in list(self)[:depth]:
            x = block(x)
        return x

    def to_plain(self, depth: int) -> nn.Sequential:
        plain = nn.Sequential()
        for name, child in list(self.named_children())[:depth]:
            plain.add_module(name, child)
        return plain
