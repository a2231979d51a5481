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

    def kept(self, depth: int | None) -> list[int]:
        """The blocks a depth runs: the first ``depth`` (a stage's first block may change the shape)."""
        return list(range(len(self) if depth is None else min(depth, len(self))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = list(self)
        for i in self.kept(self.active_depth):
            x = blocks[i](x)
        return x

    def to_plain(self, depth: int) -> nn.Sequential:
        plain, children = nn.Sequential(), list(self.named_children())
        for i in self.kept(depth):
            plain.add_module(*children[i])
        return plain


class ElasticModuleList(nn.ModuleList):
    active_depth: int | None = None  # None: every block
    order: tuple[int, ...] | None = None  # blocks ranked most important first; None: first to last

    @classmethod
    def from_plain(cls, plain: nn.ModuleList) -> "ElasticModuleList":
        return cls(list(plain))

    def kept(self, depth: int | None) -> list[int]:
        """The blocks a depth runs, in their original order: the ``depth`` best ranked (the first
        ``depth`` without a ranking). Depths stay nested: a deeper one keeps every block a
        shallower one does."""
        n = len(self._modules)
        if depth is None or depth >= n:
            return list(range(n))
        return sorted(self.order[:depth]) if self.order is not None else list(range(depth))

    def __iter__(self):
        blocks = list(super().__iter__())
        return iter([blocks[i] for i in self.kept(self.active_depth)])

    def __getitem__(self, index):
        """A slice of the active blocks (``self.layers[:config.num_hidden_layers]`` in Llama's
        forward runs the active depth); an integer indexes every block, active or not."""
        if isinstance(index, slice):
            return nn.ModuleList(list(self)[index])
        return super().__getitem__(index)

    def to_plain(self, depth: int) -> nn.ModuleList:
        blocks = list(super().__iter__())
        return nn.ModuleList([blocks[i] for i in self.kept(depth)])
