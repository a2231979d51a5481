"""Trained Rank Pruning (Xu et al. 2019): rank pressure during training, so truncation needs no fine-tuning.

Each step trains the largest sub-model on the task loss plus a nuclear-norm term, applied through
its sub-gradient (TRP, eq. 5): for ``W = U V`` with SVD ``W = P diag(s) Q^T``,
``d|W|_* / dW = P Q^T``, so the term ``nuclear * <W, P Q^T>`` (``P Q^T`` held constant) has exactly
that gradient, passed on to both factors. Every ``period`` steps each factorized layer is
truncated (TRP, eq. 3): its product is replaced by the rank-k SVD that keeps an ``energy`` share
of ``sum s^2``, written back as balanced factors ordered by singular value (components past k
zeroed), and its rank dimension is capped at the smallest choice that holds k. Between
truncations the factors drift a little; ``truncate_`` at the end of training leaves every prefix
the best approximation of the trained product again.

>>> TRPConfig(energy=0.95).period
50
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
import torch

from onefit.elastic.lowrank import svd_factors
from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train.ordered_rank import factorized_layers, require_ranks, restrict_rank_
from onefit.train.recipe import Recipe, register_recipe


@dataclass(frozen=True)
class TRPConfig:
    energy: float = 0.98  # share of sum s^2 a truncation keeps
    period: int = 50  # steps between truncations; 0: only when truncate_ is called
    nuclear: float = 1e-4  # lambda of the nuclear-norm sub-gradient term
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"TRPConfig.energy must lie in (0, 1], got {self.energy}")
        if self.period < 0:
            raise ValueError(f"TRPConfig.period must be >= 0 (0: never), got {self.period}")
        if self.nuclear < 0:
            raise ValueError(f"TRPConfig.nuclear must be >= 0, got {self.nuclear}")


def nuclear_subgradient_term(family) -> torch.Tensor:
    """``sum_layers <W, P Q^T>`` with ``P Q^T`` detached: its gradient is the nuclear-norm sub-gradient."""
    terms = []
    for name, layer in factorized_layers(family).items():
        r = family.space[name].choices[-1]
        w = layer.u[:, :r] @ layer.v[:r].flatten(1)  # (out, in * k)
        with torch.no_grad():
            p, _, qt = torch.linalg.svd(w, full_matrices=False)
        terms.append((w * (p @ qt)).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The fewest leading components whose ``s^2`` hold ``energy`` of the total."""
    share = singular_values.pow(2).cumsum(0) / singular_values.pow(2).sum().clamp_min(1e-30)
    return min(int((share < energy - 1e-9).sum()) + 1, len(singular_values))


@register_recipe
@dataclass
class TRPRecipe(Recipe):
    """Trained Rank Pruning as a onefit recipe: ``onefit.train(family, data, TRPRecipe(), ...)``."""

    name = "trp"
    config_type = TRPConfig
    config: TRPConfig = field(default_factory=TRPConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)  # the loop checkpoints it; TRP itself draws nothing
        self.steps = 0
        self.ranks: dict[str, int] = {}  # rank dimension -> its cap after the last truncation

    def describe(self) -> dict:
        return {"recipe": self.name, "config": asdict(self.config), "ranks": dict(self.ranks)}

    def state_dict(self) -> dict:
        """What a resumed run needs besides ``rng`` (the loop saves both with its checkpoints)."""
        return {"steps": self.steps, "ranks": dict(self.ranks)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.ranks = int(state["steps"]), dict(state["ranks"])

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One optimizer step of the largest sub-model with the nuclear-norm term; truncate every ``period``."""
        require_ranks(family, self)
        task = task or ClassificationTask()
        optimizer.zero_grad(set_to_none=True)
        with family.activate(family.space.max()):
            loss = task.loss(first_output(family(*task.inputs(batch))), batch)
        total = loss + self.config.nuclear * nuclear_subgradient_term(family) if self.config.nuclear else loss
        total.backward()
        optimizer.step()
        self.steps += 1
        if self.config.period and self.steps % self.config.period == 0:
            self.truncate_(family, optimizer)
        return {"loss_largest": loss.item(), "loss_mean": loss.item()}

    @torch.no_grad()
    def truncate_(self, family, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Replace each factorized product by its energy-truncated SVD, as ordered balanced factors."""
        for name, layer in factorized_layers(family).items():
            r = family.space[name].choices[-1]
            w = (layer.u[:, :r] @ layer.v[:r].flatten(1)).reshape(len(layer.u), *layer.v.shape[1:])
            u, v, s = svd_factors(w)  # (out, R'), (R', in, k...), (R',); R' = min(out, in * k)
            k = min(energy_rank(s, self.config.energy), r)
            layer.u.zero_()
            layer.v.zero_()
            layer.u[:, :k], layer.v[:k] = u[:, :k], v[:k]
            if optimizer is not None:  # the factors changed basis: their moment estimates no longer apply
                for p in (layer.u, layer.v):
                    optimizer.state.pop(p, None)
            restrict_rank_(family, name, k)
            self.ranks[name] = family.space[name].choices[-1]
        return dict(self.ranks)
