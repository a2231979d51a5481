"""Adapter rank: a low-rank update ``W + B A`` on a frozen layer (SPLoRA, Hedegaard et al. 2024),
whose first ``r`` components run; ``adapter:rank`` is one dimension for every adapted layer.

The update is a parametrization of the layer's weight, so the layer's own forward slices
``(W + B A)[rows, columns]`` for a sub-model: the prefix of ``B``'s rows and ``A``'s columns is
the adapter of that sub-model's channels, and one adapter set serves every sub-model. A
convolution's update is pointwise, on the centre of its kernel (as SPLoRA's). Extraction reads
the weight, so a sub-model holds the update fused into plain layers, with nothing added.

>>> import torch
>>> delta = LowRankDelta(out_features=4, columns=3, rank=2, shape=(4, 3))
>>> delta.B.abs().sum().item(), tuple(delta(torch.zeros(4, 3)).shape)  # B starts at zero: W + BA = W
(0.0, (4, 3))
"""

from __future__ import annotations

import torch
from torch import nn

from onefit.dims.base import Kind, register_kind

DIMENSION = "adapter:rank"


class LowRankDelta(nn.Module):
    """``weight + B[:, :r] A[:r]`` (r = ``active_rank``), on the kernel's centre for convolutions.
    ``A`` starts as Kaiming-uniform, ``B`` at zero (LoRA's start: the frozen layer exactly)."""

    def __init__(self, out_features: int, columns: int, rank: int, shape: tuple):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, columns))
        nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.active_rank, self.shape = rank, tuple(shape)

    def update(self) -> torch.Tensor:
        r = self.active_rank
        return self.B[:, :r] @ self.A[:r]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dim() == 2:
            return weight + self.update()
        centre = tuple(k // 2 for k in weight.shape[2:])
        delta = torch.zeros_like(weight)
        delta[(slice(None), slice(None), *centre)] = self.update()
        return weight + delta


@register_kind
class AdapterKind(Kind):
    """The rank of a family's adapters (``onefit.adapters``), present only while they are attached."""

    names = ("adapter",)

    @staticmethod
    def deltas(module: nn.Module, layers) -> list[LowRankDelta]:
        return [module.get_submodule(name).parametrizations.weight[0] for name in layers]

    def settings(self, family, arch):
        adapters = getattr(family, "adapters", None)
        if adapters is None or DIMENSION not in arch:
            return []
        return [(delta, "active_rank", arch[DIMENSION]) for delta in self.deltas(family.module, adapters.layers)]

    def before_extract_(self, family, sub, arch) -> None:
        adapters = getattr(family, "adapters", None)
        if adapters is not None:  # the copy's layers fuse their update at the arch's rank
            for delta in self.deltas(sub, adapters.layers):
                delta.active_rank = arch.get(DIMENSION, max(adapters.ranks))

    def columns(self, family, name):
        adapters = getattr(family, "adapters", None)
        if adapters is None:
            return {}
        if name in adapters.layers:
            return {"adapter": (f"rank {adapters.ranks}", True)}
        return {"adapter": (adapters.skipped[name], False)} if name in adapters.skipped else {}
