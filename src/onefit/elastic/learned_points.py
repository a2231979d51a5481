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

It works on any module with Linear / Conv1d / Conv2d layers or transformers' ``Conv1D`` (GPT-2's
linear layer, whose weight is (in, out), so its channels and scales run along dimension 1).
For a family's sub-model, extract it at
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

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)  # and transformers' Conv1D, known by name (see out_axis)


def out_axis(layer: nn.Module) -> int | None:
    """The output-channel dimension of ``layer``'s weight: 0, 1 for transformers' Conv1D (weight
    (in, out)), None for a layer this module cannot quantize."""
    if isinstance(layer, LAYERS):
        return 0
    return 1 if type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") else None


def channel_scale(weight: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """max |w| per output channel (along ``axis``), broadcastable against ``weight``; 1 for an all-zero channel."""
    others = tuple(d for d in range(weight.dim()) if d != axis % weight.dim())
    amax = weight.detach().abs().amax(dim=others, keepdim=True)
    return torch.where(amax > 0, amax, torch.ones_like(amax))


def quantile_points(weight: torch.Tensor, bits: int, axis: int = 0) -> torch.Tensor:
    """2^b sorted points at the quantiles (j + 1/2) / 2^b of the channel-scaled weights, linearly
    interpolated between the two nearest sorted weights as ``torch.quantile`` does (which itself
    refuses tensors of more than 2^24 elements)."""
    levels = 2 ** check_bits(bits)
    values = torch.sort((weight.detach() / channel_scale(weight, axis)).flatten().float()).values
    ranks = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels * (len(values) - 1)
    below = ranks.floor().long()
    above = (below + 1).clamp(max=len(values) - 1)
    return torch.lerp(values[below], values[above], (ranks - below).float().to(values.device))


class PointQuantizer(nn.Module):
    """A parametrization of a layer's ``weight``: the weight as its nearest learned points."""

    def __init__(self, weight: torch.Tensor, bits: int, train_weights: bool = False, axis: int = 0):
        super().__init__()
        if check_bits(bits) == FULL:
            raise ValueError(f"differentiable quantization: bits must be below {FULL}, got {bits}")
        self.bits, self.train_weights, self.axis = bits, train_weights, axis
        self.points = nn.Parameter(quantile_points(weight, bits, axis).to(weight.device, weight.dtype))

    def _nearest(self, scaled: torch.Tensor) -> torch.Tensor:
        middles = (self.points[1:] + self.points[:-1]).detach() / 2  # decision boundaries
        return torch.bucketize(scaled.detach().contiguous(), middles)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Index of every weight's nearest point (the points must be sorted)."""
        return self._nearest(weight / channel_scale(weight, self.axis))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = channel_scale(weight, self.axis)
        scaled = weight / scale  # in [-1, 1]
        values = self.points[self._nearest(scaled)]  # d values / d points: a scatter-add, eq. 5
        if self.train_weights:
            values = values + (scaled - scaled.detach())  # straight-through to w
        return values * scale


def _bits_for(name: str, bits: int | Mapping[str, int]) -> int | None:
    return bits if isinstance(bits, int) else bits.get(name)


def differentiable_quantize_(module: nn.Module, bits: int | Mapping[str, int], train_weights: bool = False) -> nn.Module:
    """Give every Linear / Conv1d / Conv2d / transformers Conv1D of ``module`` (or those named in
    ``bits``, a ``{layer: bits}`` map such as ``family.bits(arch)``) learned points. In place;
    returns ``module``. A module that already has points is refused (``bake_`` it first)."""
    if quantizers(module):
        raise ValueError("differentiable quantization: the module already has learned points; bake_ it "
                         "(or start from a copy without them) before quantizing it again")
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - {n for n, m in module.named_modules() if out_axis(m) is not None})
        if unknown:
            raise ValueError(f"differentiable quantization: no Linear or convolution called {unknown}")
    found = False
    for name, layer in list(module.named_modules()):
        b, axis = _bits_for(name, bits), out_axis(layer)
        if axis is not None and b is not None and check_bits(b) != FULL:
            quantizer = PointQuantizer(layer.weight, b, train_weights, axis)
            parametrize.register_parametrization(layer, "weight", quantizer)
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
    total, counted = 0, set()
    for layer in quantizers(module):
        q, weight = layer.parametrizations.weight[0], layer.parametrizations.weight.original
        total += math.ceil(weight.numel() * q.bits / 8) + 4 * 2**q.bits + 4 * weight.shape[q.axis]
        counted |= {id(weight), id(q.points)}
    return total + 4 * sum(p.numel() for p in module.parameters() if id(p) not in counted)


def bake_(module: nn.Module) -> nn.Module:
    """Replace each learned-points parametrization by a plain weight holding its quantized values."""
    for layer in quantizers(module):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return module
