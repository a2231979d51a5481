"""Training the learned quantization points of ``onefit.elastic.learned_points`` (Polino et al. 2018,
section 4, Algorithm 2): the loss of the quantized model, distilled from a full-precision teacher
when one is given, back-propagated to the points; the points sorted again after every step.

``learn_points`` is ``onefit.train`` over ``DifferentiableQuantizationRecipe``; it works on a
plain module (an extracted sub-model), so the result is baked by ``onefit.elastic.learned_points.bake_``.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
>>> data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))] * 2
>>> model = learn_points(model, data, DifferentiableQuantizationConfig(bits=2), epochs=1, progress=False)
>>> len(torch.unique(model[1].weight[0])) <= 4
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

from onefit.elastic.learned_points import differentiable_quantize_, point_parameters, sort_points_
from onefit.elastic.quant import FULL, check_bits
from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train.recipe import Recipe, register_recipe


@dataclass(frozen=True)
class DifferentiableQuantizationConfig:
    bits: int | Mapping[str, int] = 4  # every Linear / conv at b bits, or {layer: bits}
    train_weights: bool = False  # False: only the points learn (the paper's setting)
    lr: float = 1e-3  # Adam's learning rate for the points (they live in [-1, 1])
    temperature: float = 2.0
    distill_weight: float = 0.7  # share of the KL term when a teacher is given

    def __post_init__(self) -> None:
        where = "DifferentiableQuantizationConfig.bits"
        values = self.bits.values() if isinstance(self.bits, Mapping) else [self.bits]
        if not values or any(check_bits(b, where) == FULL for b in values):
            raise ValueError(f"{where}: bit-widths below {FULL} to learn points for, got {self.bits!r}")
        if self.lr <= 0 or self.temperature <= 0 or not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError("DifferentiableQuantizationConfig: lr and temperature must be > 0, "
                             f"distill_weight in [0, 1]; got {self.lr}, {self.temperature}, {self.distill_weight}")


@register_recipe
@dataclass
class DifferentiableQuantizationRecipe(Recipe):
    """Learns quantization points of a plain module: ``train(module, data, recipe, epochs=...)``."""

    name = "differentiable_quantization"
    trains = "module"  # a plain module (an extracted sub-model), not a family
    config_type = DifferentiableQuantizationConfig
    config: DifferentiableQuantizationConfig = field(default_factory=DifferentiableQuantizationConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(0)  # the loop checkpoints it; learning points draws nothing
        # eval mode unless the weights learn too: batch norm keeps the statistics of the fixed weights
        self.train_mode = self.config.train_weights

    def prepare(self, module: nn.Module) -> torch.optim.Optimizer:
        """The loop's default optimizer: attach the points first (``prepare_``)."""
        return self.prepare_(module)

    def prepare_(self, module: nn.Module) -> torch.optim.Optimizer:
        """Attach points to ``module`` (in place) and return an optimizer over what learns: the
        points, and with ``train_weights`` every other parameter too. Without it, nothing but the
        points requires a gradient any more (biases and norms stay as they are, gathering no ``.grad``)."""
        cfg = self.config
        differentiable_quantize_(module, cfg.bits, cfg.train_weights)
        if cfg.train_weights:
            return torch.optim.Adam(module.parameters(), lr=cfg.lr)  # the points are among them
        points = point_parameters(module)
        ids = {id(p) for p in points}
        for p in module.parameters():
            if id(p) not in ids:
                p.requires_grad_(False)
        return torch.optim.Adam(points, lr=cfg.lr)

    def step(self, module: nn.Module, batch, optimizer: torch.optim.Optimizer, teacher: nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One step: the quantized model's loss, its gradient on the points, the update, then the
        points sorted again."""
        cfg = self.config
        task = task or ClassificationTask()
        inputs = task.inputs(batch)
        optimizer.zero_grad(set_to_none=True)
        logits = first_output(module(*inputs))
        soft = None
        if teacher is not None:
            with torch.no_grad():
                soft = first_output(teacher(*inputs))
        loss = task.student_loss(logits, batch, soft, cfg.distill_weight, cfg.temperature)
        loss.backward()
        optimizer.step()
        sort_points_(module)
        return {"loss_largest": loss.item(), "loss_mean": loss.item()}


def learn_points(module: nn.Module, data: Iterable, config: DifferentiableQuantizationConfig, *, epochs: int,
                 teacher: nn.Module | None = None, task: Task | None = None, progress: bool = True) -> nn.Module:
    """Attach learned points to ``module`` and train them ``epochs`` passes over ``data`` with
    ``onefit.train`` (cosine learning rate). Batch-norm statistics are left as they are (eval
    mode), since the weights they normalise are fixed. Returns ``module`` with its points;
    ``bake_`` makes it plain."""
    from onefit.train.loop import train

    train(module, data, DifferentiableQuantizationRecipe(config), epochs=epochs, teacher=teacher, task=task,
          progress=progress)
    return module
