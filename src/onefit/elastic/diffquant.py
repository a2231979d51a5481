"""Differentiable quantization (Polino, Pascanu & Alistarh 2018, section 4): learned quantization points.

Per layer a sorted vector ``p`` of 2^b points. A weight is scaled per output channel into
[-1, 1] (``s_c = max |w_c|``, the paper's scaling function with one bucket per channel) and
mapped to its nearest point: ``Q(w) = s_c * p[argmin_j |w / s_c - p_j|]``. Indexing ``p`` by the
nearest point is differentiable in ``p``: autograd sums, for each point, the gradients of the
weights mapped to it times their scale, which is the paper's dL/dp_j (eq. 5). The points start
at quantiles of the scaled weights (point j at quantile (j + 1/2) / 2^b, so each holds an equal
share of the weights) and are sorted again after every optimizer step (``sort_points_``).

Our choice, as in the paper: the weights stay fixed while the points learn (``train_weights=False``);
``train_weights=True`` also passes a straight-through gradient to the weights.

Unlike the symmetric uniform grid of ``onefit.elastic.quant`` (2^b - 1 levels), all 2^b points
are used, so 2 bits give four levels, not three. Size: b bits per weight, 2^b fp32 points per
layer and one fp32 scale per output channel (``points_bytes``).

It works on any module with Linear / convolution layers. For a family's sub-model, extract it at
full precision and pass the arch's bit-widths: ``differentiable_quantize_(family.extract({**arch,
**{k: 32 for k in arch if k.startswith("bits:")}}), bits=family.bits(arch))``. ``bake_`` then leaves
a plain module whose weights hold the quantized values.

>>> layer = torch.nn.Linear(64, 4)
>>> model = differentiable_quantize_(torch.nn.Sequential(layer), bits=2)
>>> len(torch.unique(model[0].weight[0])) <= 4
True
>>> type(bake_(model)[0]) is torch.nn.Linear
True
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from onefit.elastic.quant import FULL, check_bits

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """max |w| per output channel (dimension 0), broadcastable against ``weight``; 1 for an all-zero channel."""
    amax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
    return torch.where(amax > 0, amax, torch.ones_like(amax))


def quantile_points(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """2^b sorted points at the quantiles (j + 1/2) / 2^b of the channel-scaled weights."""
    levels = 2 ** check_bits(bits)
    scaled = (weight.detach() / channel_scale(weight)).flatten().float()
    return torch.quantile(scaled, (torch.arange(levels, dtype=torch.float32) + 0.5) / levels)


class PointQuantizer(nn.Module):
    """A parametrization of a layer's ``weight``: the weight as its nearest learned points."""

    def __init__(self, weight: torch.Tensor, bits: int, train_weights: bool = False):
        super().__init__()
        if check_bits(bits) == FULL:
            raise ValueError(f"differentiable quantization: bits must be below {FULL}, got {bits}")
        self.bits, self.train_weights = bits, train_weights
        self.points = nn.Parameter(quantile_points(weight, bits).to(weight.device, weight.dtype))

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Index of every weight's nearest point (the points must be sorted)."""
        middles = (self.points[1:] + self.points[:-1]).detach() / 2  # decision boundaries
        return torch.bucketize((weight.detach() / channel_scale(weight)).contiguous(), middles)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = channel_scale(weight)
        values = self.points[self.codes(weight)]  # d values / d points: a scatter-add, eq. 5
        if self.train_weights:
            values = values + (weight / scale - (weight / scale).detach())  # straight-through to w
        return values * scale


def _bits_for(name: str, bits: int | Mapping[str, int]) -> int | None:
    return bits if isinstance(bits, int) else bits.get(name)


def differentiable_quantize_(module: nn.Module, bits: int | Mapping[str, int], train_weights: bool = False) -> nn.Module:
    """Give every Linear / Conv1d / Conv2d of ``module`` (or those named in ``bits``, a
    ``{layer: bits}`` map such as ``family.bits(arch)``) learned points. In place; returns ``module``."""
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - {n for n, m in module.named_modules() if isinstance(m, LAYERS)})
        if unknown:
            raise ValueError(f"differentiable quantization: no Linear or convolution called {unknown}")
    found = False
    for name, layer in list(module.named_modules()):
        b = _bits_for(name, bits)
        if isinstance(layer, LAYERS) and b is not None and check_bits(b) != FULL:
            parametrize.register_parametrization(layer, "weight", PointQuantizer(layer.weight, b, train_weights))
            found = True
    if not found:
        raise ValueError("differentiable quantization: no Linear or convolution layer to quantize below 32 bits")
    if not train_weights:
        for layer in quantizers(module):  # the paper's setting: only the points learn
            layer.parametrizations.weight.original.requires_grad_(False)
    return module


def quantizers(module: nn.Module) -> list[nn.Module]:
    """The layers of ``module`` that carry learned points."""
    return [m for m in module.modules() if parametrize.is_parametrized(m, "weight")
            and isinstance(m.parametrizations.weight[0], PointQuantizer)]


def point_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The points, to hand to an optimizer."""
    return [m.parametrizations.weight[0].points for m in quantizers(module)]


@torch.no_grad()
def sort_points_(module: nn.Module) -> nn.Module:
    """Keep every layer's points sorted (after an optimizer step); nearest-point lookup relies on it."""
    for points in point_parameters(module):
        points.copy_(torch.sort(points).values)
    return module


def points_bytes(module: nn.Module) -> int:
    """Stored size of ``module``'s parameters: b bits per weight (packed, per layer rounded up to
    whole bytes), 2^b fp32 points and one fp32 scale per output channel for each layer with points;
    4 bytes for every other parameter (biases, norms, layers without points)."""
    total, done = 0, set()
    for layer in quantizers(module):
        q, weight = layer.parametrizations.weight[0], layer.parametrizations.weight.original
        total += math.ceil(weight.numel() * q.bits / 8) + 4 * 2**q.bits + 4 * weight.shape[0]
        done.add(id(weight))
    return total + 4 * sum(p.numel() for p in module.parameters() if id(p) not in done
                           and not any(p is pts for pts in point_parameters(module)))


def bake_(module: nn.Module) -> nn.Module:
    """Replace each learned-points parametrization by a plain weight holding its quantized values."""
    for layer in quantizers(module):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return module
