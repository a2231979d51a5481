"""What an elastic layer declares besides its forward: the rules the rest of onefit reads.

- ``coupling``: how its channels couple, the name of a rule of the coupling walk
  (``onefit.graph.coupling.RULES``): ``"linear"`` (reads the last axis, produces a new group
  there), ``"conv"`` (the same on axis 1; grouped convolutions pass their width through),
  ``"batch_norm"`` (passes axis 1), ``"layer_norm"`` (passes the last axis), ``"attention"``
  (``nn.MultiheadAttention``: its heads are a group). ``None``: not traced (read off a
  transformer's modules).
- ``plain_sizes(plain)``: (input, output) features of the plain layer it replaces;
  ``full_sizes()`` the same for itself.
- ``cost(kind, n_in, n_out, positions)``: (params, MACs per sample) at a width, for counts.
- ``quantizable`` / ``factorizable``: whether a bits or a rank dimension can apply.

A layer type of your own becomes elastic with ``@register(MyLayer)`` on a subclass of
``ElasticLayer`` that has ``from_plain`` / ``to_plain`` and these: nothing in onefit to edit
(``tests/test_extensions.py`` does it).

>>> from onefit.elastic import ElasticLinear
>>> layer = ElasticLinear.from_plain(nn.Linear(8, 4))
>>> layer.coupling, layer.full_sizes(), layer.cost("linear", 8, 2, positions=1)
('linear', (8, 4), (18, 16))
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


class ElasticLayer:
    coupling: ClassVar[str | None] = "linear"
    quantizable: ClassVar[bool] = False
    factorizable: ClassVar[bool] = False

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        """(input, output) features of ``plain``: ``in_features`` / ``out_features`` by default."""
        return plain.in_features, plain.out_features

    def full_sizes(self) -> tuple[int, int]:
        return type(self).plain_sizes(self)

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        """(params, MACs per sample) at ``n_in`` inputs and ``n_out`` outputs: a dense map by default."""
        bias = getattr(self, "bias", None) is not None
        return n_in * n_out + bias * n_out, n_in * n_out * positions


def layer_cost(module: nn.Module, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
    """``module.cost`` for an elastic layer; a layer onefit keeps whole counts its parameters and no MACs."""
    if isinstance(module, ElasticLayer) and kind != "other":
        return module.cost(kind, n_in, n_out, positions)
    return sum(p.numel() for p in module.parameters()), 0


def full_sizes(module: nn.Module) -> tuple[int, int]:
    return module.full_sizes() if isinstance(module, ElasticLayer) else (0, 0)


def segment_index(within: torch.Tensor, size: int, segments: int) -> torch.Tensor:
    """The same channels ``within`` each of ``segments`` equal parts of ``size`` side by side (a
    fused q|k|v, a fused gate|up, the query heads of each key/value group).

    >>> segment_index(torch.arange(2), size=4, segments=3).tolist()
    [0, 1, 4, 5, 8, 9]
    """
    return (torch.arange(segments, device=within.device)[:, None] * size + within).flatten()
