"""Elastic ``nn.Embedding``: the first ``active_out`` columns of every token's vector.

Its columns are channels of whatever reads the embedding (a transformer's residual stream, an
MLP's input), so a narrower stream starts here. An output layer tied to it (``out.weight =
emb.weight``) holds the same tensor and keeps the same columns (``onefit.graph.ties``).

>>> layer = ElasticEmbedding.from_plain(nn.Embedding(10, 8))
>>> layer.active_out = 3
>>> tuple(layer(torch.tensor([[1, 2]])).shape), layer.to_plain(10, 3)
((1, 2, 3), Embedding(10, 3))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register


@register(nn.Embedding)
class ElasticEmbedding(ElasticLayer, nn.Embedding):
    coupling = "embedding"

    active_out: int | None = None  # None: every column

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.num_embeddings, plain.embedding_dim

    @classmethod
    def from_plain(cls, plain: nn.Embedding) -> "ElasticEmbedding":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                     "scale_grad_by_freq", "sparse"):
            setattr(layer, attr, getattr(plain, attr))
        layer.weight = plain.weight
        return layer

    @staticmethod
    def refuses(plain: nn.Module) -> str | None:
        """Why ``plain`` cannot be sliced, or None: a subclass with a forward of its own (a scaled
        embedding) computes something this layer does not."""
        if type(plain).forward is not nn.Embedding.forward:
            return f"{type(plain).__name__} has a forward of its own; kept whole"
        if plain.max_norm is not None:
            return "an embedding with max_norm renormalises its rows in place; kept whole"
        return None

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        return n_in * n_out, 0  # a lookup: parameters, no multiply-adds

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.active_out is None else self.weight[:, : self.active_out]
        return F.embedding(input, weight, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, self.sparse)

    def to_plain(self, in_size: int, out_size: int) -> nn.Embedding:
        plain = nn.Embedding(self.num_embeddings, out_size, padding_idx=self.padding_idx,
                             scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse,
                             device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight[:, :out_size])
        return plain

    # Importance sorting: a channel is a column.
    def channel_scores(self) -> torch.Tensor:
        return self.weight.detach().abs().sum(0)

    def permute_out(self, order: torch.Tensor) -> None:
        self.weight.copy_(self.weight[:, order])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_out={self.active_out}"
