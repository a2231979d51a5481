"""Elastic ``transformers.pytorch_utils.Conv1D`` (GPT-2's linear layer with transposed weights).

``segments`` > 1 is a fused projection such as GPT-2's ``c_attn``, whose outputs are query, key
and value side by side: each segment keeps its own first ``active_out`` outputs, so fewer heads
stay aligned in all three. Its output channels are the weight's columns (``out_axis = 1``), so
``active_bits`` quantizes per column.
"""

from __future__ import annotations

import torch
from torch import nn

from onefit.elastic.quant import fake_quantize
from onefit.elastic.base import ElasticLayer, segment_index
from onefit.elastic.registry import register


@register("transformers.pytorch_utils.Conv1D")
class ElasticHFConv1D(ElasticLayer, nn.Module):
    coupling = None  # read off GPT-2's modules, never traced
    quantizable = True

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.nx, plain.nf

    active_out: int | None = None  # outputs per segment; None: all
    active_bits: int | None = None  # weight bit-width; None or 32: full precision
    out_axis = 1  # weight is (in, out): one quantization scale per column

    @classmethod
    def from_plain(cls, plain: nn.Module) -> "ElasticHFConv1D":
        layer = cls()
        layer.weight, layer.bias = plain.weight, plain.bias  # weight: (in, out)
        layer.nx, layer.nf = plain.nx, plain.nf
        layer.plain_type = type(plain)
        layer.segments = 1
        return layer

    def columns(self, per_segment: int) -> torch.Tensor:
        return segment_index(torch.arange(per_segment), self.nf // self.segments, self.segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[-1]
        cols = self.columns(self.nf // self.segments if self.active_out is None else self.active_out)
        x, weight = fake_quantize(self, x, self.weight[:n_in, cols], axis=self.out_axis)
        out = torch.addmm(self.bias[cols], x.reshape(-1, n_in), weight)
        return out.view(*x.shape[:-1], len(cols))

    def to_plain(self, in_size: int, out_size: int) -> nn.Module:
        plain = self.plain_type(out_size, in_size)
        cols = self.columns(out_size // self.segments)
        with torch.no_grad():
            plain.weight.copy_(self.weight[:in_size, cols])
            plain.bias.copy_(self.bias[cols])
        return plain

    # Layout-aware hooks for importance sorting (weights are (in, out), outputs in segments).
    def channel_scores(self) -> torch.Tensor:
        per = self.weight.detach().abs().sum(0)  # (out,)
        return per.view(self.segments, -1).sum(0)

    def permute_out(self, order: torch.Tensor) -> None:
        cols = segment_index(order, self.nf // self.segments, self.segments)
        self.weight.copy_(self.weight[:, cols])
        self.bias.copy_(self.bias[cols])

    def permute_in(self, rows: torch.Tensor) -> None:
        self.weight.copy_(self.weight[rows])
