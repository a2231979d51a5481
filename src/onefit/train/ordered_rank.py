"""Ordered-rank training of factorized layers (Maestro, Horváth et al. 2024).

Each step draws a rank per factorized layer (the sampler draws every dimension on its own, so
each layer gets its own rank, as Maestro's ordered dropout does), accumulates the gradients of
the sampled sub-models on one batch, and adds a hierarchical group lasso on the tail components:

    loss + lambda * sum_layers sum_{b=1}^{R-1} || [U[:, b:], V[b:]] ||_F

Counting components from 0, component j sits in the j tail groups b = 1..j (the first in none),
so later components are pushed harder towards zero and importance collects at the front, where
the small ranks look. For a linear map with isotropic inputs, nested training of this kind
recovers the SVD: every prefix becomes the best rank-b approximation (Maestro, Theorem 3.1;
``tests/test_lowrank.py``). Progressive shrinking then drops the trailing components whose norm
``|U[:, j]| |V[j]|`` fell below ``shrink_threshold`` times the largest: the rank dimension loses
the choices above the smallest one that still holds every component left, and the components
past that cap are zeroed.

>>> config = OrderedRankConfig(group_lasso=1e-4, shrink_every=0)
>>> config.distill
'inplace'
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
import torch

from onefit.space import Dimension, Space
from onefit.tasks import Task
from onefit.train.recipe import Recipe, register_recipe
from onefit.train.sampler import SandwichSampler
from onefit.train.sorted import SortedNetConfig, nested_backward


@dataclass(frozen=True)
class OrderedRankConfig(SortedNetConfig):
    """SortedNet's distillation and seed fields (``distill``, ``temperature``, ``distill_weight``,
    ``seed``) plus the group lasso and progressive shrinking."""

    group_lasso: float = 1e-4  # lambda of the hierarchical group lasso on the tail components
    shrink_every: int = 100  # steps between progressive-shrinking checks; 0: never shrink
    shrink_threshold: float = 1e-3  # a trailing component below this share of the largest norm is dropped

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_lasso < 0:
            raise ValueError(f"OrderedRankConfig.group_lasso must be >= 0, got {self.group_lasso}")
        if self.shrink_every < 0:
            raise ValueError(f"OrderedRankConfig.shrink_every must be >= 0 (0: never), got {self.shrink_every}")
        if not 0.0 <= self.shrink_threshold < 1.0:
            raise ValueError(f"OrderedRankConfig.shrink_threshold must lie in [0, 1), got {self.shrink_threshold}")


def factorized_layers(family) -> dict[str, torch.nn.Module]:
    """``{rank dimension name: layer}`` for every factorized layer (each has a rank dimension)."""
    return {f"rank:{n}": family.module.get_submodule(n) for n in family.factorized}


def require_ranks(family, recipe) -> None:
    """Raise unless ``family`` has rank dimensions for ``recipe`` to train."""
    if not family.factorized:
        raise ValueError(f"{type(recipe).__name__} needs rank dimensions; "
                         "set ElasticConfig(rank=...) or rank_layers=...")


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
    family.restrict_(Space([Dimension(d.name, d.kind, choices) if d.name == name else d for d in family.space]),
                     by=f"rank of {name} capped at {cap}")
    return True


@torch.no_grad()
def zero_tail_(layer, rank: int, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Zero the components of ``layer`` past ``rank``, and their entries in the optimizer's moment
    buffers: no sub-model reaches them, so with zero gradients and moments they stay zero."""
    for param, tail in ((layer.u, (slice(None), slice(rank, None))), (layer.v, slice(rank, None))):
        param[tail] = 0
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        for buffer in state.values():
            if isinstance(buffer, torch.Tensor) and buffer.shape == param.shape:
                buffer[tail] = 0


@register_recipe
@dataclass
class OrderedRankRecipe(Recipe):
    """Maestro's ordered-rank training as a onefit recipe: ``onefit.train(family, data, recipe, ...)``."""

    name = "ordered_rank"
    config_type = OrderedRankConfig
    config: OrderedRankConfig = field(default_factory=OrderedRankConfig)
    sampler: SandwichSampler = field(default_factory=SandwichSampler)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.steps = 0
        self.shrunk: dict[str, int] = {}  # rank dimension -> components it kept at its last shrink

    def describe(self) -> dict:
        return {"recipe": self.name, "config": asdict(self.config), "sampler": asdict(self.sampler),
                "shrunk": dict(self.shrunk)}

    def state_dict(self) -> dict:
        """What a resumed run needs besides ``rng`` (the loop saves both with its checkpoints)."""
        return {"steps": self.steps, "shrunk": dict(self.shrunk)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.shrunk = int(state["steps"]), dict(state["shrunk"])

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One optimizer step: the sampled sub-models' losses plus the group lasso, then maybe shrink."""
        require_ranks(family, self)
        optimizer.zero_grad(set_to_none=True)
        archs = self.sampler(family.space, self.rng)
        losses = nested_backward(family, archs, batch, self.config, teacher, task)
        penalty = torch.zeros(())
        if self.config.group_lasso > 0:
            penalty = self.config.group_lasso * hierarchical_group_lasso(family)
            penalty.backward()
        optimizer.step()
        self.steps += 1
        if self.config.shrink_every and self.steps % self.config.shrink_every == 0:
            self.shrink_(family, optimizer)
        return {"loss_largest": losses[0], "loss_mean": sum(losses) / len(losses), "group_lasso": penalty.item()}

    def shrink_(self, family, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Progressive shrinking: cap each rank dimension after its last component above the
        threshold and zero the components past the cap (with their moments in ``optimizer``)."""
        for name, layer in factorized_layers(family).items():
            norms = layer.component_norms()[: family.space[name].choices[-1]]
            above = torch.nonzero(norms >= self.config.shrink_threshold * norms.max()).flatten()
            keep = int(above[-1]) + 1 if len(above) else 1
            if restrict_rank_(family, name, keep):
                self.shrunk[name] = keep
                zero_tail_(layer, family.space[name].choices[-1], optimizer)
        return dict(self.shrunk)
