"""Training the learned quantization points of ``onefit.elastic.diffquant`` (Polino et al. 2018,
section 4, Algorithm 2): the loss of the quantized model, distilled from a full-precision teacher
when one is given, back-propagated to the points; the points sorted again after every step.

``learn_points`` is the visible loop around ``DifferentiableQuantizationRecipe.step``; it works on a
plain module (an extracted sub-model), so the result is baked by ``onefit.elastic.diffquant.bake_``.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
>>> data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))] * 2
>>> model = learn_points(model, data, DifferentiableQuantizationConfig(bits=2), epochs=1, progress=False)
>>> len(torch.unique(model[1].weight[0])) <= 4
True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from onefit.elastic.diffquant import differentiable_quantize_, point_parameters, sort_points_
from onefit.elastic.quant import FULL, check_bits
from onefit.progress import progress_bar
from onefit.train.loop import set_cosine_lr
from onefit.train.sorted import distillation_loss


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


@dataclass
class DifferentiableQuantizationRecipe:
    config: DifferentiableQuantizationConfig

    def describe(self) -> dict:
        return {"recipe": "differentiable_quantization", "config": asdict(self.config)}

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

    def step(self, module: nn.Module, batch, optimizer: torch.optim.Optimizer, teacher: nn.Module | None = None) -> dict:
        """One step on ``batch = (x, y)``: the quantized model's loss, its gradient on the points,
        the update, then the points sorted again."""
        cfg = self.config
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        logits = module(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None and cfg.distill_weight > 0:
            with torch.no_grad():
                soft = teacher(x)
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * distillation_loss(logits, soft, cfg.temperature)
        loss.backward()
        optimizer.step()
        sort_points_(module)
        return {"loss": loss.item()}


def learn_points(module: nn.Module, data: Iterable, config: DifferentiableQuantizationConfig, *, epochs: int,
                 teacher: nn.Module | None = None, progress: bool = True) -> nn.Module:
    """Attach learned points to ``module`` and train them ``epochs`` passes over ``data`` (cosine
    learning rate). Batch-norm statistics are left as they are (eval mode), since the weights
    they normalise are fixed. Returns ``module`` with its points; ``bake_`` makes it plain."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    try:
        n = len(data)  # the cosine schedule needs the number of steps
    except TypeError:
        raise ValueError(f"learn_points: data must have a length (a list or a DataLoader over a sized dataset) "
                         f"to schedule the learning rate; got {type(data).__name__} without one") from None
    recipe = DifferentiableQuantizationRecipe(config)
    optimizer = recipe.prepare_(module)
    # eval mode: batch norm uses its statistics rather than chasing each batch (the weights are fixed)
    module.train(config.train_weights)
    with progress_bar(progress) as bar:
        task = bar.add_task("learning points", total=epochs * n)
        for epoch in range(epochs):
            for i, batch in enumerate(data):
                set_cosine_lr(optimizer, epoch * n + i, epochs * n)
                recipe.step(module, batch, optimizer, teacher=teacher)
                bar.update(task, advance=1)
    return module.eval()
