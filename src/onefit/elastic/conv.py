"""Elastic ``nn.Conv1d`` / ``nn.Conv2d``, including grouped and depthwise convolutions.

A plain convolution (``groups == 1``) produces its first ``active_out`` channels from however
many input channels arrive. A grouped convolution whose input and output widths are equal
(depthwise is the case of one channel per group) passes its width through: ``c`` active
channels are the first ``c / channels_per_group`` groups, so the prefix of its input is the
prefix of its output. With ``active_bits`` the active slice of the weights is fake-quantized.

>>> depthwise = ElasticConv.from_plain(nn.Conv2d(8, 8, 3, padding=1, groups=8))
>>> depthwise.passes_width, tuple(depthwise(torch.randn(1, 4, 6, 6)).shape)  # 4 channels in, 4 out
(True, (1, 4, 6, 6))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from onefit.elastic.base import ElasticLayer
from onefit.elastic.quant import fake_quantize
from onefit.elastic.registry import register


@register(nn.Conv1d, nn.Conv2d)
class ElasticConv(ElasticLayer, nn.Module):
    coupling = "conv"
    quantizable = factorizable = True

    active_out: int | None = None  # None: all outputs; ignored by pass-through (grouped) convs
    in_index = None  # input channels to use when the input is a concatenation; None: a prefix
    active_bits: int | None = None  # weight bit-width; None or 32: full precision

    @classmethod
    def from_plain(cls, plain: nn.Conv1d | nn.Conv2d) -> "ElasticConv":
        if plain.padding_mode != "zeros":
            raise TypeError(f"elastic convolution needs padding_mode='zeros', got {plain.padding_mode!r}")
        if isinstance(plain.padding, str):
            raise TypeError(f"elastic convolution needs numeric padding, got {plain.padding!r}")
        layer = cls()
        layer.weight, layer.bias = plain.weight, plain.bias
        layer.plain_type = type(plain)
        layer.in_channels, layer.out_channels = plain.in_channels, plain.out_channels
        layer.groups = plain.groups
        layer.options = dict(stride=plain.stride, padding=plain.padding, dilation=plain.dilation)
        layer._conv = F.conv2d if isinstance(plain, nn.Conv2d) else F.conv1d
        return layer

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.in_channels, plain.out_channels

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        bias = self.bias is not None
        kernel = self.weight[0, 0].numel()
        per_group_in = self.in_channels // self.groups if kind == "conv_pass" else n_in // self.groups
        weights = n_out * per_group_in * kernel
        return weights + bias * n_out, weights * positions

    @property
    def passes_width(self) -> bool:
        """True for grouped convs with equal in and out widths: their width follows their input."""
        return self.groups > 1 and self.in_channels == self.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[1]
        if n_in > self.in_channels:
            raise ValueError(f"ElasticConv got {n_in} input channels, holds only {self.in_channels}")
        if self.passes_width:
            per_group = self.in_channels // self.groups
            out, groups = n_in, n_in // per_group
            weight = self.weight[:out]
        else:
            out = self.out_channels if self.active_out is None else self.active_out
            groups = self.groups  # grouped convs that do not pass width are kept at full width
            weight = self.weight[:out, : n_in // groups] if self.in_index is None else self.weight[:out, self.in_index]
        bias = None if self.bias is None else self.bias[:out]
        options = self.options
        transform = self._modules.get("kernel_transform")  # set by onefit.dims.kernel, if anywhere
        if transform is not None:  # a smaller kernel: the centre, transformed, less padding
            weight, options = transform(weight, options)
        x, weight = fake_quantize(self, x, weight)
        return self._conv(x, weight, bias, groups=groups, **options)

    def to_plain(self, in_size: int, out_size: int, in_index: torch.Tensor | None = None) -> nn.Module:
        if self.passes_width:
            groups = in_size // (self.in_channels // self.groups)
        else:
            groups = self.groups
        kernel = tuple(self.weight.shape[2:])
        plain = self.plain_type(in_size, out_size, kernel, groups=groups, bias=self.bias is not None, **self.options)
        with torch.no_grad():
            columns = slice(0, in_size // groups) if in_index is None else in_index
            plain.weight.copy_(self.weight[:out_size, columns])
            if self.bias is not None:
                plain.bias.copy_(self.bias[:out_size])
        return plain.to(self.weight.device, self.weight.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.plain_type.__name__}({self.in_channels}, {self.out_channels}, "
            f"kernel={tuple(self.weight.shape[2:])}, groups={self.groups}), active_out={self.active_out}, "
            f"active_bits={self.active_bits}"
        )
