"""Depth by importance: rank a transformer's blocks by how much each changes what flows through
it (ShortGPT's Block Influence, as Minitron ranks depth), so a shallower sub-model drops the
blocks that matter least instead of the last ones.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.resnet(widths=(8,), blocks=(2,)), (torch.randn(1, 1, 8, 8),))
>>> block_importance(family, [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])  # no ModuleList stage
{}
"""

from __future__ import annotations

import torch


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
