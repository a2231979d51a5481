"""Ordered-rank training of factorized layers (Maestro, Horváth et al. 2024).

Each step draws a rank per factorized layer (the sampler draws every dimension on its own, so
each layer gets its own rank, as Maestro's ordered dropout does), accumulates the gradients of
the sampled sub-models on one batch, and adds a hierarchical group lasso on the tail components:

    loss + lambda * sum_layers sum_{b=1}^{R-1} || [U[:, b:], V[b:]] ||_F

A component b sits in the b + 1 tail groups that start at or before it, so later components are
pushed harder towards zero and importance collects at the front, where the small ranks look.
For a linear map with isotropic inputs, nested training of this kind recovers the SVD: every
prefix becomes the best rank-b approximation (Maestro, Theorem 3.1; ``tests/test_lowrank.py``).
Progressive shrinking then drops the trailing components whose norm ``|U[:, j]| |V[j]|`` fell
below ``shrink_threshold`` times the largest: the rank dimension loses the choices above the
smallest one that still holds every component left.

>>> config = OrderedRankConfig(group_lasso=1e-4, shrink_every=0)
>>> config.distill
'inplace'
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from onefit.space import Dimension, Space
from onefit.train.sampler import SandwichSampler
from onefit.train.sorted import DISTILL, distillation_loss


@dataclass(frozen=True)
class OrderedRankConfig:
    group_lasso: float = 1e-4  # lambda of the hierarchical group lasso on the tail components
    shrink_every: int = 100  # steps between progressive-shrinking checks; 0: never shrink
    shrink_threshold: float = 1e-3  # a trailing component below this share of the largest norm is dropped
    distill: str = "inplace"  # as SortedNetConfig: "none", "inplace" or "teacher"
    temperature: float = 2.0
    distill_weight: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group_lasso < 0:
            raise ValueError(f"OrderedRankConfig.group_lasso must be >= 0, got {self.group_lasso}")
        if self.shrink_every < 0:
            raise ValueError(f"OrderedRankConfig.shrink_every must be >= 0 (0: never), got {self.shrink_every}")
        if not 0.0 <= self.shrink_threshold < 1.0:
            raise ValueError(f"OrderedRankConfig.shrink_threshold must lie in [0, 1), got {self.shrink_threshold}")
        if self.distill not in DISTILL:
            raise ValueError(f"OrderedRankConfig.distill: {self.distill!r} is not one of {DISTILL}")
        if self.temperature <= 0 or not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"OrderedRankConfig: temperature must be > 0 and distill_weight in [0, 1], got "
                             f"{self.temperature}, {self.distill_weight}")


def factorized_layers(family) -> dict[str, torch.nn.Module]:
    """``{rank dimension name: layer}`` for every factorized layer with a rank dimension."""
    return {f"rank:{n}": family.module.get_submodule(n) for n in family.factorized if f"rank:{n}" in family.space.names}


def hierarchical_group_lasso(family) -> torch.Tensor:
    """``sum_layers sum_{b>=1} |[U[:, b:], V[b:]]|_F`` over each layer's current largest rank."""
    terms = []
    for name, layer in factorized_layers(family).items():
        r = family.space[name].choices[-1]
        energy = layer.u[:, :r].pow(2).sum(0) + layer.v[:r].flatten(1).pow(2).sum(1)  # (r,) per component
        tails = energy.flip(0).cumsum(0).flip(0)[1:]  # tails[b-1] = sum_{j >= b} energy_j
        terms.append(tails.clamp_min(1e-12).sqrt().sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def restrict_rank_(family, name: str, rank: int) -> bool:
    """Cap the rank dimension ``name`` at its smallest choice that holds ``rank`` components: the
    choices above it go. The choices stay those of the config, so an arch means the same in every
    family built with it. Returns whether the space changed."""
    dim = family.space[name]
    cap = next(c for c in dim.choices if c >= min(rank, dim.choices[-1]))
    if cap == dim.choices[-1]:
        return False
    choices = tuple(c for c in dim.choices if c <= cap)
    family.space = Space([Dimension(d.name, d.kind, choices) if d.name == name else d for d in family.space])
    return True


def nested_backward(family, archs, batch, loss_fn, config, teacher=None) -> list[float]:
    """Accumulate the gradients of ``archs`` on ``batch`` (averaged), with in-place or teacher
    distillation as in SortedNet; the first arch teaches the rest with ``distill='inplace'``."""
    x, y = batch
    soft = None
    if config.distill == "teacher":
        if teacher is None:
            raise ValueError("distill='teacher' needs a teacher module passed to step()")
        with torch.no_grad():
            soft = teacher(x)
    losses = []
    for arch in archs:
        with family.activate(arch):
            out = family(x)
        loss = loss_fn(out, y)
        if soft is not None and config.distill_weight > 0:
            loss = (1 - config.distill_weight) * loss + config.distill_weight * distillation_loss(out, soft, config.temperature)
        (loss / len(archs)).backward()
        losses.append(loss.item())
        if config.distill == "inplace" and soft is None:
            soft = out.detach()
    return losses


@dataclass
class OrderedRankRecipe:
    """Maestro's ordered-rank training as a onefit recipe: ``onefit.train(family, data, recipe, ...)``.

    ``loss``: the task loss on (outputs, targets); cross-entropy by default.
    """

    config: OrderedRankConfig = field(default_factory=OrderedRankConfig)
    sampler: SandwichSampler = field(default_factory=SandwichSampler)
    loss: Callable | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.steps = 0
        self.shrunk: dict[str, int] = {}  # rank dimension -> components it kept at its last shrink

    def describe(self) -> dict:
        return {"recipe": "ordered_rank", "config": asdict(self.config), "sampler": asdict(self.sampler),
                "shrunk": dict(self.shrunk)}

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None) -> dict:
        """One optimizer step: the sampled sub-models' losses plus the group lasso, then maybe shrink."""
        optimizer.zero_grad(set_to_none=True)
        archs = self.sampler(family.space, self.rng)
        losses = nested_backward(family, archs, batch, self.loss or F.cross_entropy, self.config, teacher)
        penalty = torch.zeros(())
        if self.config.group_lasso > 0:
            penalty = self.config.group_lasso * hierarchical_group_lasso(family)
            penalty.backward()
        optimizer.step()
        self.steps += 1
        if self.config.shrink_every and self.steps % self.config.shrink_every == 0:
            self.shrink_(family)
        return {"loss_largest": losses[0], "loss_mean": sum(losses) / len(losses), "group_lasso": penalty.item()}

    def shrink_(self, family) -> dict[str, int]:
        """Progressive shrinking: cap each rank dimension after its last component above the threshold."""
        for name, layer in factorized_layers(family).items():
            norms = layer.component_norms()[: family.space[name].choices[-1]]
            above = torch.nonzero(norms >= self.config.shrink_threshold * norms.max()).flatten()
            keep = int(above[-1]) + 1 if len(above) else 1
            if restrict_rank_(family, name, keep):
                self.shrunk[name] = keep
        return dict(self.shrunk)
