"""Factorized elastic layers: rank as an elastic dimension (Maestro, Horváth et al. 2024).

A Linear ``W`` (out x in) is held as ``U`` (out x R) times ``V`` (R x in); a convolution as a k x k
convolution to R channels (``V``, shape (R, in, k...)) followed by a 1 x 1 convolution (``U``).
Rank ``r`` uses the first r components, ``U[:, :r] @ V[:r]``. The factors start from the SVD of
the dense weight, ``W = P diag(s) Q^T``, balanced as ``U = P sqrt(s)``, ``V = sqrt(s) Q^T``, with
components in decreasing singular value, so the full rank ``R = min(out, in * k...)`` reproduces
``W`` and every prefix is the best rank-r approximation of it (Eckart-Young) at the start.

Width composes: the active output rows of ``U`` and the input columns of ``V`` are sliced as a
dense layer's rows and columns would be. At a rank where the two factors hold more parameters
than the dense layer, extraction multiplies them out and gives the dense layer.

>>> import torch
>>> from torch import nn
>>> dense = nn.Linear(32, 16)
>>> layer = ElasticLowRankLinear.from_dense(dense, choices=(4, 8, 16))
>>> torch.allclose(layer(torch.ones(1, 32)), dense(torch.ones(1, 32)), atol=1e-5)
True
>>> layer.active_rank = 4
>>> layer.to_plain(32, 16)
Sequential(
  (0): Linear(in_features=32, out_features=4, bias=False)
  (1): Linear(in_features=4, out_features=16, bias=True)
)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from onefit.elastic.base import ElasticLayer
from onefit.elastic.conv import ElasticConv
from onefit.elastic.linear import ElasticLinear
from onefit.elastic.ties import tied_layers


def factorized_params(n_in: int, n_out: int, rank: int, kernel: int = 1) -> int:
    """Weights of the two factors at ``rank``: ``r * (in * k + out)`` (no bias)."""
    return rank * (n_in * kernel + n_out)


def saves(n_in: int, n_out: int, rank: int, kernel: int = 1) -> bool:
    """Whether the factorized form at ``rank`` holds fewer weights than the dense ``out x in x k``."""
    return factorized_params(n_in, n_out, rank, kernel) < n_in * n_out * kernel


def svd_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balanced SVD factors of ``weight`` (out, in, k...) and its singular values:
    U (out, R), V (R, in, k...), s (R,) decreasing, R = min(out, in*k)."""
    matrix = weight.detach().flatten(1)  # (out, in * k...)
    p, s, qt = torch.linalg.svd(matrix.double(), full_matrices=False)  # s decreasing
    root = s.sqrt()
    u, v = p * root, root[:, None] * qt  # U diag(s)^1/2, diag(s)^1/2 Q^T
    return u.to(weight.dtype), v.to(weight.dtype).reshape(len(s), *weight.shape[1:]), s.to(weight.dtype)


class _LowRank(ElasticLayer, nn.Module):
    """What the factorized Linear and convolution share: rank prefix, importance and sorting hooks.
    Its cost is the dense layer's; the rank dimension counts the factors (``lowrank_cost``)."""

    coupling = None  # made from an elastic layer after the coupling walk

    def full_sizes(self) -> tuple[int, int]:
        return getattr(self, "in_features", None) or self.in_channels, self.u.shape[0]

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        weights = n_in * n_out * self.kernel
        return weights + (self.bias is not None) * n_out, weights * positions

    active_out: int | None = None  # None: all outputs
    active_rank: int | None = None  # None: the full rank
    in_index = None  # not supported: a layer reading a concatenation is kept dense

    def _init_factors(self, weight: torch.Tensor, bias: torch.Tensor | None, choices: tuple[int, ...]) -> None:
        u, v, _ = svd_factors(weight)
        self.u, self.v = nn.Parameter(u), nn.Parameter(v)
        self.bias = bias
        self.rank_choices = tuple(choices)  # the rank dimension's choices, set from ElasticConfig

    @property
    def full_rank(self) -> int:
        return self.u.shape[1]

    @property
    def kernel(self) -> int:
        """Weights per input channel and output: 1 for a Linear, k x k... for a convolution."""
        return math.prod(self.v.shape[2:])

    def rank(self) -> int:
        """The active rank, checked against the factors this layer holds."""
        r = self.full_rank if self.active_rank is None else int(self.active_rank)
        if not 1 <= r <= self.full_rank:
            raise ValueError(f"{type(self).__name__}: rank {r} is outside 1..{self.full_rank}, "
                             f"the full rank min(out, in * kernel) this layer holds")
        return r

    def _factors(self, n_in: int, n_out: int, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.u[:n_out, :r], self.v[:r, :n_in]

    def dense_weight(self, n_in: int | None = None, n_out: int | None = None, r: int | None = None) -> torch.Tensor:
        """``U[:out, :r] @ V[:r, :in]`` in the dense layer's shape (out, in, k...)."""
        u, v = self._factors(n_in or self.v.shape[1], n_out or self.u.shape[0], r or self.rank())
        return (u @ v.flatten(1)).reshape(len(u), *v.shape[1:])

    def component_norms(self) -> torch.Tensor:
        """``|U[:, j]| * |V[j]|`` per component: its singular value when U and V are balanced SVD factors."""
        return self.u.detach().norm(dim=0) * self.v.detach().flatten(1).norm(dim=1)

    # hooks for onefit.importance: sorting a width group permutes U's rows or V's input columns
    def channel_scores(self) -> torch.Tensor:
        return self.dense_weight().detach().abs().flatten(1).sum(1)

    def permute_out(self, order: torch.Tensor) -> None:
        self.u.copy_(self.u[order])
        if self.bias is not None:
            self.bias.copy_(self.bias[order])

    def permute_in(self, cols: torch.Tensor) -> None:
        self.v.copy_(self.v[:, cols])

    def _active(self, n_in: int, limit: int) -> tuple[int, int]:
        if n_in > limit:
            raise ValueError(f"{type(self).__name__} got {n_in} inputs, holds only {limit}")
        return (self.u.shape[0] if self.active_out is None else self.active_out), self.rank()

    def _plain(self, n_in: int, n_out: int, bias: bool, pointwise: bool = False) -> nn.Module:
        """The plain layer ``n_in -> n_out``: the dense layer's kind, or a 1 x 1 one with ``pointwise``."""
        raise NotImplementedError

    def to_plain(self, in_size: int, out_size: int, in_index=None) -> nn.Module:
        """Two layers of rank r (V, then U), or the dense layer when that holds fewer parameters."""
        r, has_bias = self.rank(), self.bias is not None
        if saves(in_size, out_size, r, self.kernel):
            u, v = (t.detach() for t in self._factors(in_size, out_size, r))
            plain = nn.Sequential(self._plain(in_size, r, False), self._plain(r, out_size, has_bias, pointwise=True))
            plain[0].weight.data.copy_(v)
            plain[1].weight.data.copy_(u.reshape(plain[1].weight.shape))  # (out, r) or (out, r, 1, 1...)
            last = plain[1]
        else:
            plain = last = self._plain(in_size, out_size, has_bias)
            plain.weight.data.copy_(self.dense_weight(in_size, out_size, r).detach())
        if has_bias:
            last.bias.data.copy_(self.bias[:out_size])
        return plain.to(self.u.device, self.u.dtype)

    def extra_repr(self) -> str:
        return (f"{self.v.shape[1]} -> rank {self.full_rank} -> {self.u.shape[0]}, kernel={tuple(self.v.shape[2:])}, "
                f"active_out={self.active_out}, active_rank={self.active_rank}")


class ElasticLowRankLinear(_LowRank):
    """``y = (x V[:r, :in]^T) U[:out, :r]^T + b``: two matrix products of rank r."""

    @classmethod
    def from_dense(cls, dense: nn.Module, choices: tuple[int, ...]) -> "ElasticLowRankLinear":
        layer = cls()
        layer.in_features, layer.out_features = dense.in_features, dense.out_features
        layer._init_factors(dense.weight, dense.bias, choices)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, r = self._active(x.shape[-1], self.in_features)
        u, v = self._factors(x.shape[-1], out, r)
        return F.linear(F.linear(x, v), u, None if self.bias is None else self.bias[:out])

    def _plain(self, n_in: int, n_out: int, bias: bool, pointwise: bool = False) -> nn.Module:
        return nn.Linear(n_in, n_out, bias=bias)


class ElasticLowRankConv(_LowRank):
    """A k x k convolution to r channels (stride, padding, dilation of the original), then 1 x 1 to out."""

    @classmethod
    def from_dense(cls, dense: nn.Module, choices: tuple[int, ...]) -> "ElasticLowRankConv":
        if dense.groups != 1:
            raise ValueError("a grouped convolution cannot be factorized; keep it dense")
        layer = cls()
        layer.in_channels, layer.out_channels = dense.in_channels, dense.out_channels
        layer.plain_type, layer.options = dense.plain_type, dict(dense.options)
        layer._conv = dense._conv
        layer._init_factors(dense.weight, dense.bias, choices)
        return layer

    def _pointwise(self, u: torch.Tensor) -> torch.Tensor:
        return u.reshape(*u.shape, *[1] * (self.v.dim() - 2))  # (out, r, 1, 1...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, r = self._active(x.shape[1], self.in_channels)
        u, v = self._factors(x.shape[1], out, r)
        h = self._conv(x, v, None, **self.options)  # (B, r, H', W')
        return self._conv(h, self._pointwise(u), None if self.bias is None else self.bias[:out])

    def _plain(self, n_in: int, n_out: int, bias: bool, pointwise: bool = False) -> nn.Module:
        if pointwise:  # the 1 x 1 convolution U: stride, padding and dilation belong to V's
            return self.plain_type(n_in, n_out, 1, bias=bias)
        return self.plain_type(n_in, n_out, tuple(self.v.shape[2:]), bias=bias, **self.options)


def lowrank_cost(layer: _LowRank, n_in: int, n_out: int, rank: int, positions: int) -> tuple[int, int]:
    """(params, MACs per sample) of ``layer`` extracted at ``rank``: ``r (in k + out)`` weights, or
    ``in out k`` when the dense layer is cheaper (extraction then gives it); MACs are weights x
    output positions (the k x k convolution to r channels runs at the output resolution)."""
    k = layer.kernel
    weights = factorized_params(n_in, n_out, rank, k) if saves(n_in, n_out, rank, k) else n_in * n_out * k
    return weights + (n_out if layer.bias is not None else 0), weights * positions


def _why_dense(plan_layer, elastic: nn.Module) -> str | None:
    """Why ``plan_layer`` has no factorized form, or None if it has one."""
    if plan_layer.kind == "conv_pass" or getattr(elastic, "groups", 1) != 1:
        return "grouped or depthwise convolution: no factorized form"
    if plan_layer.kind not in ("linear", "conv") or not getattr(elastic, "factorizable", False) \
            or not isinstance(elastic, (ElasticLinear, ElasticConv)):
        return f"no factorized form for {type(elastic).__name__}"
    if plan_layer.segments > 1 or plan_layer.in_segments:
        return "fused projection or concatenated input: kept dense"
    return None


def _why_unprofitable(elastic: nn.Module, choices: tuple[int, ...]) -> str | None:
    """Why factorizing ``elastic`` with ``choices`` is not worth it, or None if it is."""
    if len(choices) < 2:
        return "one rank choice only (the full rank)"
    n_in, n_out = getattr(elastic, "in_features", None) or elastic.in_channels, elastic.weight.shape[0]
    kernel = elastic.weight[0, 0].numel()
    if not saves(n_in, n_out, choices[0], kernel):
        return (f"too small to factorize profitably: rank {choices[0]} takes {factorized_params(n_in, n_out, choices[0], kernel):,} "
                f"weights, dense {n_in * n_out * kernel:,}")
    return None


def factorize_(module: nn.Module, plan, config) -> tuple[list[str], dict[str, str]]:
    """Replace every eligible Linear and plain convolution of ``module`` by its factorized form, in place.

    ``config`` (an ``ElasticConfig``) says which layers a rank setting names
    (``rank_fractions``) and their rank choices (``rank_choices``). Returns the names of the layers
    factorized, and ``{layer: why it stays dense}`` for the named layers that stay dense.
    """
    factorized, notes, tied = [], {}, tied_layers(plan.tied)
    for layer in plan.layers.values():
        if layer.kind not in ("linear", "conv", "conv_pass", "mha") or config.rank_fractions(layer.name) is None:
            continue
        elastic = module.get_submodule(layer.name)
        reason = tied.get(layer.name) or _why_dense(layer, elastic)
        if reason is None:
            choices = config.rank_choices(layer.name, min(elastic.weight.shape[0], elastic.weight[0].numel()))
            reason = _why_unprofitable(elastic, choices)
        if reason is not None:
            notes[layer.name] = reason
            continue
        kind = ElasticLowRankLinear if layer.kind == "linear" else ElasticLowRankConv
        low_rank = kind.from_dense(elastic, choices)
        low_rank.train(elastic.training)
        parent, _, child = layer.name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, low_rank)
        factorized.append(layer.name)
    return factorized, notes
