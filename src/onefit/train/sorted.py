"""SortedNet nested training (Valipour et al. 2023) with in-place distillation (BigNAS, OFA).

One step: visit the sampler's sub-models on the same batch, accumulate their gradients, take one
optimizer step. The largest sub-model learns from the labels; the others learn from the labels
and, with distillation on, from the softened outputs of the largest one (or of an external
teacher): ``(1 - a) * CE(y) + a * T^2 * KL(p_teacher^T || p_student^T)`` (Hinton et al. 2015) for
classification; the task names its loss and its distillation loss (``onefit.distill``).

>>> import onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> recipe = SortedNetRecipe(SortedNetConfig(distill_weight=0.3, seed=1))
>>> batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
>>> out = recipe.step(family, batch, torch.optim.SGD(family.parameters(), lr=0.1))
>>> out["loss_largest"] > 0 and len(recipe.sampler(family.space, recipe.rng)) == 4  # largest, smallest, 2 random
True
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
import torch

from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train.recipe import Recipe, register_recipe
from onefit.train.sampler import SandwichSampler

DISTILL = ("none", "inplace", "teacher")


@dataclass(frozen=True)
class SortedNetConfig:
    distill: str = "inplace"  # "none", "inplace" (from the largest sub-model) or "teacher"
    temperature: float = 2.0  # softens both distributions in the KL term
    distill_weight: float = 0.5  # a: share of the KL term in a student's loss
    seed: int = 0  # drives the random sub-models; same seed, same sequence

    def __post_init__(self) -> None:
        name = type(self).__name__  # subclasses (OrderedRankConfig) share these fields and checks
        if self.distill not in DISTILL:
            raise ValueError(f"{name}.distill: {self.distill!r} is not one of {DISTILL}")
        if self.temperature <= 0:
            raise ValueError(f"{name}.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"{name}.distill_weight must lie in [0, 1], got {self.distill_weight}")


def nested_backward(family, archs, batch, config: SortedNetConfig, teacher: torch.nn.Module | None = None,
                    task: Task | None = None) -> list[float]:
    """Accumulate the gradients of ``archs`` on ``batch``, each loss divided by their number;
    returns the losses. With ``distill='inplace'`` the first arch (the largest) teaches the rest;
    a student's loss is ``(1 - a) * task loss + a * task.distill(student, teacher, T)``."""
    if config.distill == "teacher" and teacher is None:
        raise ValueError(f"{type(config).__name__}.distill='teacher' needs a teacher module passed to step()")
    task = task or ClassificationTask()
    inputs = task.inputs(batch)
    soft = None
    if config.distill == "teacher":
        with torch.no_grad():
            soft = first_output(teacher(*inputs))
    losses = []
    for arch in archs:
        with family.activate(arch):
            logits = first_output(family(*inputs))
        loss = task.student_loss(logits, batch, soft, config.distill_weight, config.temperature)
        (loss / len(archs)).backward()
        losses.append(loss.item())
        if config.distill == "inplace" and soft is None:
            soft = logits.detach()  # the largest, visited first, teaches the rest
    return losses


@register_recipe
@dataclass
class SortedNetRecipe(Recipe):
    name = "sortednet"
    config_type = SortedNetConfig
    config: SortedNetConfig = field(default_factory=SortedNetConfig)
    sampler: SandwichSampler = field(default_factory=SandwichSampler)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def describe(self) -> dict:
        return {"recipe": self.name, "config": asdict(self.config), "sampler": asdict(self.sampler)}

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One optimizer step over the sampled sub-models of ``family`` on ``batch``."""
        optimizer.zero_grad(set_to_none=True)
        losses = nested_backward(family, self.sampler(family.space, self.rng), batch, self.config, teacher, task)
        optimizer.step()
        return {"loss_largest": losses[0], "loss_mean": sum(losses) / len(losses)}
