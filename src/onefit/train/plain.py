"""Ordinary training of one model: the task's loss, one optimizer step a batch. The baseline a
family is compared with (``train_plain``), and a recipe like any other.

>>> import torch
>>> model = torch.nn.Linear(4, 3)
>>> batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
>>> out = PlainRecipe().step(model, batch, torch.optim.SGD(model.parameters(), lr=0.1))
>>> out["loss_largest"] == out["loss_mean"]
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

from onefit.tasks import ClassificationTask, first_output
from onefit.train.recipe import Recipe, register_recipe


@dataclass(frozen=True)
class PlainConfig:
    seed: int = 0  # kept for the loop's resumable state; plain training draws nothing


@register_recipe
@dataclass
class PlainRecipe(Recipe):
    name = "plain"
    trains = "module"
    config_type = PlainConfig
    config: PlainConfig = field(default_factory=PlainConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def step(self, model: nn.Module, batch, optimizer: torch.optim.Optimizer, teacher: nn.Module | None = None,
             task=None) -> dict:
        task = task or ClassificationTask()
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(first_output(model(*task.inputs(batch))), batch)
        loss.backward()
        optimizer.step()
        return {"loss_largest": loss.item(), "loss_mean": loss.item()}
