"""One rank of the distributed training test (``tests/test_distributed.py``), started by torchrun:

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py OUT [--last-pass-only]

Trains a small family with SortedNet on fixed data and writes ``OUT/rank{R}.json``: the final
parameters and, after every step, the largest difference between this rank's parameters and
rank 0's. ``--last-pass-only`` trains through the DistributedDataParallel wrapper with the sandwich's
passes accumulated under ``no_sync`` (the trap ``onefit.train.distributed`` avoids), to show the
test's checks catch it. With one process (no torchrun) it trains the same family alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import onefit
from onefit.train import SortedNetConfig, SortedNetRecipe, distributed, train

STEPS, BATCH = 6, 16


def family():
    """A transformer encoder (no batch norm): heads, FFN widths and depth, so the smallest
    sub-model leaves whole blocks unused."""
    torch.manual_seed(0)
    model = onefit.zoo.sequence_encoder(features=8, dim=16, depth=3, heads=2, classes=4)
    return onefit.elasticize(model, (torch.randn(1, 6, 8),))


def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 6, 8, generator=g), torch.randint(0, 4, (BATCH,), generator=g)) for _ in range(STEPS)]


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class Checked(SortedNetRecipe):
    """SortedNet that records, after every step, how far this rank's parameters are from rank 0's."""

    def __post_init__(self):
        super().__post_init__()
        self.gaps: list[float] = []

    def step(self, family, batch, optimizer, teacher=None, task=None):
        out = super().step(family, batch, optimizer, teacher=teacher, task=task)
        if distributed.current() is not None:
            import torch.distributed as dist

            mine = flat(family)
            leader = mine.clone()
            dist.broadcast(leader, src=0)
            self.gaps.append(float((mine - leader).abs().max()))
        return out


def last_pass_only(fam, batches, recipe, world, rank):
    """The trap (pytorch issue 69031) written out: the sandwich's passes accumulate locally and
    only the last pass's gradients (the smallest sub-model's) are averaged across ranks."""
    from onefit.tasks import ClassificationTask

    optimizer = torch.optim.SGD(fam.parameters(), lr=0.05, momentum=0.9)
    task, config = ClassificationTask(), recipe.config
    for batch in batches:
        x, y = part = distributed.shard(batch, rank, world)
        archs = recipe.sampler(fam.space, recipe.rng)
        optimizer.zero_grad(set_to_none=True)
        soft, local = None, None
        for i, arch in enumerate(archs):  # nested_backward's passes
            if i == len(archs) - 1:  # keep what the earlier passes accumulated, rank-local
                local = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in fam.parameters()]
                optimizer.zero_grad(set_to_none=True)
            with fam.activate(arch):
                logits = fam(x)
            loss = task.student_loss(logits, part, soft, config.distill_weight, config.temperature)
            (loss / len(archs)).backward()
            soft = logits.detach() if soft is None else soft
        with torch.no_grad():
            distributed.average_gradients(list(fam.parameters()), world)
            for p, kept in zip(fam.parameters(), local):
                p.grad += kept
        optimizer.step()
        mine = flat(fam)
        leader = mine.clone()
        torch.distributed.broadcast(leader, src=0)
        recipe.gaps.append(float((mine - leader).abs().max()))


def main(out: Path, naive: bool) -> None:
    group = distributed.init_from_env()
    rank, world = (group.rank, group.world) if group else (0, 1)
    fam, recipe = family(), Checked(SortedNetConfig(distill="inplace", seed=3))
    if naive:
        last_pass_only(fam, data(), recipe, world, rank)
    else:
        train(fam, data(), recipe, epochs=1, cosine=False, progress=False,
              optimizer=torch.optim.SGD(fam.parameters(), lr=0.05, momentum=0.9))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"world": world, "params": flat(fam).tolist(),
                                                      "gaps": recipe.gaps}))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--last-pass-only" in sys.argv[2:])
