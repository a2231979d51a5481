"""Elastic depth: a stage of repeated blocks that runs only its first ``active_depth`` blocks.

``ElasticSequential`` replaces an ``nn.Sequential``; ``ElasticModuleList`` replaces an
``nn.ModuleList`` that its owner iterates over (as Hugging Face encoders do), yielding only the
active blocks.
"""

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


class ElasticModuleList(nn.ModuleList):
    active_depth: int | None = None  # None: every block

    @classmethod
    def from_plain(cls, plain: nn.ModuleList) -> "ElasticModuleList":
        return cls(list(plain))

    def __iter__(self):
        blocks = list(super().__iter__())
        return iter(blocks if self.active_depth is None else blocks[: self.active_depth])

    def __getitem__(self, index):
        """A slice of the active blocks (``self.layers[:config.num_hidden_layers]`` in Llama's
        forward runs the active depth); an integer indexes every block, active or not."""
        if isinstance(index, slice):
            return nn.ModuleList(list(self)[index])
        return super().__getitem__(index)

    def to_plain(self, depth: int) -> nn.ModuleList:
        return nn.ModuleList(list(super().__iter__())[:depth])
