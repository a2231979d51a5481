"""Importance sorting: reorder every width group's channels so that prefixes keep the best ones.

The reordering is a permutation applied consistently to producers (output rows), pass-through
layers (norm statistics, depthwise filters) and consumers (input columns), so the full model's
function is unchanged; only which channels a prefix keeps changes (Once-for-All, sec. 3.2).

>>> import torch
>>> from torch import nn
>>> from onefit.family import elasticize
>>> family = elasticize(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), (torch.randn(1, 4),))
>>> x = torch.randn(3, 4)
>>> before = family(x)
>>> torch.allclose(sort_(family)(x), before, atol=1e-6)
True
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from onefit.graph import Plan


class Importance(Protocol):
    """Scores each channel of a group from the layers producing it; higher is more important.

    One that needs data (``ActivationImportance``, ``TaylorImportance``) also has
    ``measure(family) -> {group id: scores}``, run once per sort; a group it has no scores for
    falls back to its ``__call__``."""

    def __call__(self, producers: list[nn.Module]) -> torch.Tensor: ...


class L1Importance:
    """Sum over the group's producers of each output channel's L1 weight norm, each producer's
    scores normalised to mean 1 so that no single layer dominates the sum."""

    def __call__(self, producers: list[nn.Module]) -> torch.Tensor:
        total = 0
        for layer in producers:
            if hasattr(layer, "channel_scores"):  # a layer with its own weight layout
                score = layer.channel_scores()
            else:
                score = layer.weight.detach().abs().flatten(1).sum(1)
            total = total + score / score.mean().clamp_min(1e-12)
        return total


def sort_(family, importance: Importance | None = None, optimizer: torch.optim.Optimizer | None = None):
    """Sort every group of ``family`` with a dimension in its space (width, heads, hidden size, key/value
    groups) in place, most important first. ``optimizer``: its per-parameter state (Adam's moments,
    SGD's momentum) is reordered with the weights, so training goes on as if nothing moved."""
    importance = importance or L1Importance()
    module, plan = family.module, family.plan
    measured = importance.measure(family) if hasattr(importance, "measure") else {}
    orders = []
    with torch.no_grad():
        for gid, group in plan.groups.items():
            if not group.elastic or group.name not in family.space.names:  # no dimension: no prefix to rank for
                continue
            producers = [module.get_submodule(n) for n in group.producers]
            scores = measured[gid] if gid in measured else importance(producers)
            # Grouped convolutions and attention heads tie channels in blocks of `multiple`:
            # move whole blocks.
            m = group.multiple
            blocks = torch.argsort(scores.view(-1, m).sum(1), descending=True, stable=True)
            order = (blocks[:, None] * m + torch.arange(m)).flatten()
            _permute_group(module, plan, gid, order)
            orders.append((gid, order))
        if optimizer is not None:
            _permute_state(module, plan, optimizer, orders)
    return family


def _permute_state(module: nn.Module, plan: Plan, optimizer: torch.optim.Optimizer, orders: list) -> None:
    """Replay the permutations on each kind of per-parameter optimizer state: every parameter with
    that state holds it in place of its weights for the replay; the rest of the module (weights
    without it, norm statistics) is put back as it was."""
    params = list(module.parameters())
    keys = {k for p in params for k, v in optimizer.state.get(p, {}).items()
            if isinstance(v, torch.Tensor) and v.shape == p.shape}
    for key in sorted(keys):
        saved = {n: t.clone() for n, t in module.state_dict(keep_vars=True).items()}
        held = [p for p in params if isinstance(optimizer.state.get(p, {}).get(key), torch.Tensor)
                and optimizer.state[p][key].shape == p.shape]
        weights = {p: p.data for p in held}
        for p in held:
            p.data = optimizer.state[p][key]
        for gid, order in orders:
            _permute_group(module, plan, gid, order)
        for p in held:
            p.data = weights[p]
        held_ids = {id(p) for p in held}
        for name, t in module.state_dict(keep_vars=True).items():
            if id(t) not in held_ids:  # permuted twice otherwise
                t.data.copy_(saved[name])


def _permute_parts(m: nn.Module, layer, parts: torch.Tensor) -> None:
    """Reorder a layer's equal output segments, or the equal parts of the input it reads."""
    if not layer.in_segments:
        m.permute_segments(parts)
        return
    size = m.weight.shape[1] // len(layer.in_segments)
    m.weight.copy_(m.weight[:, (parts[:, None] * size + torch.arange(size)).flatten()])


def _segment_offsets(layer, gid: int) -> list[int]:
    """Where group ``gid`` starts in a layer's concatenated input: once per part it is (the query
    heads of every key/value group read by an attention's output projection), or nowhere."""
    offsets, offset = [], 0
    for group, size in layer.in_segments:
        if group == gid:
            offsets.append(offset)
        offset += size
    return offsets


def _permute_group(module: nn.Module, plan: Plan, gid: int, order: torch.Tensor) -> None:
    permuted: set[int] = set()  # a weight several layers hold (tied embeddings) is permuted once
    for layer in plan.layers.values():
        m = module.get_submodule(layer.name)
        if layer.segment_group == gid:  # whole key/value groups: q_proj's segments, o_proj's parts
            _permute_parts(m, layer, order[:: plan.groups[gid].multiple] // plan.groups[gid].multiple)
            continue
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and id(weight) in permuted:
            continue
        if isinstance(weight, torch.Tensor) and gid in (layer.in_group, layer.out_group):
            permuted.add(id(weight))
        offsets = _segment_offsets(layer, gid)
        if offsets:  # the group is one part (or several) of a concatenation this layer reads
            cols = torch.arange(m.weight.shape[1] if layer.kind != "norm" else m.weight.shape[0])
            for offset in offsets:
                cols[offset : offset + len(order)] = offset + order
            if layer.kind == "norm":
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m, name, None)
                    if isinstance(t, torch.Tensor):
                        t.copy_(t[cols])
            else:
                m.weight.copy_(m.weight[:, cols])
            continue
        if hasattr(m, "permute_out"):  # a layer with its own weight layout
            if layer.out_group == gid:
                m.permute_out(order)
            if layer.in_group == gid:
                m.permute_in((order[:, None] * layer.in_unit + torch.arange(layer.in_unit)).flatten())
            continue
        if layer.out_group == gid:
            # Output side: rows of weights and every per-channel tensor (bias, norm statistics).
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(t, torch.Tensor) and t.dim() >= 1:
                    t.copy_(t[order])
        if layer.in_group == gid and layer.kind in ("linear", "conv"):
            # Input side: columns, each channel spanning in_unit consecutive features.
            cols = (order[:, None] * layer.in_unit + torch.arange(layer.in_unit)).flatten()
            m.weight.copy_(m.weight[:, cols])
