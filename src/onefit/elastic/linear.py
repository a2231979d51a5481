"""Elastic ``nn.Linear``: the first ``active_out`` outputs, as many inputs as the tensor brings,
its weights fake-quantized to ``active_bits``.

``segments`` > 1: the outputs are that many equal parts side by side (the query heads of each
key/value group of grouped-query attention, the gate and up halves of a fused projection), and
each part keeps its own first ``active_out`` outputs.

>>> layer = ElasticLinear.from_plain(nn.Linear(8, 4))
>>> layer.active_out = 2
>>> tuple(layer(torch.randn(3, 5)).shape)  # 5 of its 8 inputs arrive, 2 of its 4 outputs leave
(3, 2)
>>> layer.to_plain(5, 2)
Linear(in_features=5, out_features=2, bias=True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onefit.elastic.base import ElasticLayer, segment_index
from onefit.elastic.quant import fake_quantize
from onefit.elastic.registry import register


@register(nn.Linear)
class ElasticLinear(ElasticLayer, nn.Linear):
    coupling = "linear"
    quantizable = factorizable = True

    active_out: int | None = None  # None: all outputs; with segments, outputs per segment
    in_index = None  # input columns to use when the input is a concatenation; None: a prefix
    active_bits: int | None = None  # weight bit-width; None or 32: full precision
    segments: int = 1  # equal parts of the outputs, each shrinking by its own prefix
    active_segments: int | None = None  # the first parts kept (whole key/value groups); None: all

    @classmethod
    def from_plain(cls, plain: nn.Linear) -> "ElasticLinear":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = plain.in_features, plain.out_features
        layer.weight, layer.bias = plain.weight, plain.bias
        layer.active_out = None
        return layer

    def rows(self, per_segment: int | None, kept: int | None = None):
        """The output rows kept: a prefix, or each kept segment's first ``per_segment``."""
        if self.segments == 1:
            return slice(0, self.out_features if per_segment is None else per_segment)
        size = self.out_features // self.segments
        within = torch.arange(size if per_segment is None else per_segment, device=self.weight.device)
        return segment_index(within, size, kept or self.active_segments or self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[-1]
        if n_in > self.in_features:
            raise ValueError(f"ElasticLinear got {n_in} input features, holds only {self.in_features}")
        rows = self.rows(self.active_out)
        bias = None if self.bias is None else self.bias[rows]
        weight = self.weight[rows, :n_in] if self.in_index is None else self.weight[rows][:, self.in_index]
        x, weight = fake_quantize(self, x, weight)
        return F.linear(x, weight, bias)

    def to_plain(self, in_size: int, out_size: int, in_index: torch.Tensor | None = None,
                 segments: int | None = None) -> nn.Linear:
        plain = nn.Linear(in_size, out_size, bias=self.bias is not None)
        kept = segments or self.segments
        rows = self.rows(out_size // kept, kept)
        with torch.no_grad():
            columns = slice(0, in_size) if in_index is None else in_index
            plain.weight.copy_(self.weight[rows][:, columns])
            if self.bias is not None:
                plain.bias.copy_(self.bias[rows])
        return plain.to(self.weight.device, self.weight.dtype)

    # Importance sorting: a channel of a segmented layer is that channel in every segment.
    def channel_scores(self) -> torch.Tensor:
        return self.weight.detach().abs().sum(1).view(self.segments, -1).sum(0)

    def permute_out(self, order: torch.Tensor) -> None:
        rows = segment_index(order, self.out_features // self.segments, self.segments)
        self.weight.copy_(self.weight[rows])
        if self.bias is not None:
            self.bias.copy_(self.bias[rows])

    def permute_in(self, columns: torch.Tensor) -> None:
        self.weight.copy_(self.weight[:, columns])

    def permute_segments(self, order: torch.Tensor) -> None:
        """Reorder whole output segments (key/value groups with their query heads)."""
        size = self.out_features // self.segments
        rows = (order[:, None] * size + torch.arange(size)).flatten()
        self.weight.copy_(self.weight[rows])
        if self.bias is not None:
            self.bias.copy_(self.bias[rows])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_out={self.active_out}, active_bits={self.active_bits}"
