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
    """Scores each channel of a group; higher is more important."""

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


def sort_(family, importance: Importance | None = None):
    """Sort every elastic width and heads group of ``family`` in place, most important first."""
    importance = importance or L1Importance()
    module, plan = family.module, family.plan
    with torch.no_grad():
        for gid, group in plan.groups.items():
            if not group.elastic:
                continue
            producers = [module.get_submodule(n) for n in group.producers]
            # Grouped convolutions and attention heads tie channels in blocks of `multiple`:
            # move whole blocks.
            m = group.multiple
            blocks = torch.argsort(importance(producers).view(-1, m).sum(1), descending=True, stable=True)
            order = (blocks[:, None] * m + torch.arange(m)).flatten()
            _permute_group(module, plan, gid, order)
    return family


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


def block_importance(family, data, task=None, batches: int = 8) -> dict[str, list[float]]:
    """How much each block of every ``ModuleList`` depth stage (a transformer's layers) changes
    what flows through it: one minus the mean cosine between the block's input and output hidden
    states, over every position of up to ``batches`` batches of ``data``, the largest sub-model
    running (ShortGPT's Block Influence; Minitron ranks depth so). A block near 0 is nearly an
    identity: the first to drop."""
    import torch.nn.functional as F

    from onefit.elastic.depth import ElasticModuleList
    from onefit.tasks import ClassificationTask

    task = task or ClassificationTask()
    stages = {s.name: family.module.get_submodule(s.name) for s in family.plan.stages}
    stages = {name: stage for name, stage in stages.items() if isinstance(stage, ElasticModuleList)}
    totals = {name: torch.zeros(len(stage._modules), dtype=torch.float64) for name, stage in stages.items()}
    seen = {name: 0 for name in stages}
    hooks = []

    def hook(name, index):
        def record(module, args, kwargs, output):
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, (tuple, list)) else output
            cosine = F.cosine_similarity(before.reshape(-1, before.shape[-1]).double(),
                                         after.reshape(-1, after.shape[-1]).double(), dim=-1)
            totals[name][index] += cosine.mean().item()
            if index == 0:
                seen[name] += 1
        return record

    for name, stage in stages.items():
        for index, block in enumerate(stage._modules.values()):
            hooks.append(block.register_forward_hook(hook(name, index), with_kwargs=True))
    modes = {m: m.training for m in family.modules()}
    try:
        family.eval()
        with torch.no_grad(), family.activate(family.space.max()):
            for i, batch in enumerate(data):
                if i == batches:
                    break
                family(*task.inputs(batch))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if stages and not any(seen.values()):
        raise ValueError("block_importance: the data gave no batch")
    return {name: (1.0 - totals[name] / max(seen[name], 1)).tolist() for name in stages}


def order_depth_(family, data, task=None, batches: int = 8) -> dict[str, list[float]]:
    """Rank the blocks of every ``ModuleList`` depth stage by ``block_importance``, so a sub-model
    of depth d keeps the d most important blocks, in their original order, instead of the first
    d (dropping a language model's last layers is the worst choice). Depths stay nested. The
    ranking is saved with the family. Returns the scores."""
    scores = block_importance(family, data, task, batches)
    if not scores:
        stages = [s.name for s in family.plan.stages]
        raise ValueError(f"order_depth_: no depth stage of this family is a ModuleList of blocks (a transformer's "
                         f"layers) to rank; its depth stages are {stages or 'none'}, whose first blocks must stay first")
    family.rank_blocks_({name: sorted(range(len(v)), key=lambda i: (-v[i], i)) for name, v in scores.items()})
    return scores
