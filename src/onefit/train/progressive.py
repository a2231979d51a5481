"""Progressive shrinking (Once-for-All, Cai et al. 2020, section 3.2): train the full network
first, then release the dimensions in phases (kernel, then depth, then width, then bits or rank
where the family has them), each phase sampling only what has been released so far (the rest
at its largest), with in-place distillation from the full network (SortedNet's nested step).
As in Once-for-All, the phase that releases the widths (or heads) begins by sorting the channels
by importance (``onefit.importance.sort_``, L1; the optimizer's per-channel state reordered with
them), so the narrow sub-models start from the channels the trained network relies on most, and
the loop's cosine learning rate starts again at each phase (``cosine_span``), as each phase is a
run of its own in Once-for-All.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
>>> recipe = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=(2, 3)))
>>> recipe.schedule(family)  # the family's kinds in Once-for-All's order, one phase each
[(), ('depth',), ('width',)]
>>> [recipe.released(family, step) for step in (0, 1, 2, 4, 5, 99)]
[(), (), ('depth',), ('depth',), ('depth', 'width'), ('depth', 'width')]
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import torch

from onefit.importance import sort_
from onefit.space import Dimension, Space
from onefit.tasks import Task
from onefit.train.recipe import Recipe, register_recipe
from onefit.train.sampler import SandwichSampler
from onefit.train.sorted import SortedNetConfig, nested_backward

ORDER = ("kernel", "depth", "width", "heads", "bits", "rank")  # Once-for-All's, extended
SORTED_KINDS = {"width", "heads"}  # the kinds whose release sorts the channels first


@dataclass(frozen=True)
class ProgressiveShrinkingConfig(SortedNetConfig):
    """SortedNet's distillation and seed fields plus the schedule. ``phases``: the dimension kinds
    each phase releases, in order (None: every kind the family has, in ``ORDER``, one a phase);
    ``phase_steps``: steps of the full network alone, then of each phase but the last (which runs
    to the end); one int: the same length for each."""

    phases: tuple[tuple[str, ...], ...] | None = None
    phase_steps: int | tuple[int, ...] = 100
    sort_width: bool = True  # sort the channels by importance when the widths are released
    restart_lr: bool = True  # the loop's cosine schedule restarts at each phase, as each is its own run in OFA

    def __post_init__(self) -> None:
        super().__post_init__()
        where = "ProgressiveShrinkingConfig"
        if self.phases is not None:
            phases = tuple((p,) if isinstance(p, str) else tuple(p) for p in self.phases)
            if not phases or not all(phases):
                raise ValueError(f"{where}.phases: a non-empty tuple of non-empty tuples of kinds, got {self.phases!r}")
            object.__setattr__(self, "phases", phases)
        steps = (self.phase_steps,) if isinstance(self.phase_steps, int) else tuple(self.phase_steps)
        if not steps or any(not isinstance(s, int) or s < 0 for s in steps):
            raise ValueError(f"{where}.phase_steps: non-negative step counts, got {self.phase_steps!r}")
        object.__setattr__(self, "phase_steps", steps if len(steps) > 1 else steps[0])


@register_recipe
@dataclass
class ProgressiveShrinkingRecipe(Recipe):
    name = "progressive_shrinking"
    config_type = ProgressiveShrinkingConfig
    config: ProgressiveShrinkingConfig = field(default_factory=ProgressiveShrinkingConfig)
    sampler: SandwichSampler = field(default_factory=SandwichSampler)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)
        self.steps = 0

    def describe(self) -> dict:
        return {"recipe": self.name, "config": asdict(self.config), "sampler": asdict(self.sampler)}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])

    def schedule(self, family) -> list[tuple[str, ...]]:
        """The kinds each phase adds, the first phase (the full network) adding none."""
        present = [k for k in ORDER if any(d.kind == k for d in family.space)]
        present += sorted({d.kind for d in family.space} - set(ORDER))  # kinds of your own, last
        if self.config.phases is None:
            return [(), *((k,) for k in present)]
        missing = sorted({k for phase in self.config.phases for k in phase} - set(present))
        if missing:
            raise ValueError(f"ProgressiveShrinkingConfig.phases names {missing}, which this family does not have; "
                             f"its dimension kinds are {present}")
        return [(), *self.config.phases]

    def released(self, family, step: int) -> tuple[str, ...]:
        """The kinds sampled at ``step``: those of every phase begun by then."""
        return tuple(k for phase in self.schedule(family)[: self._phase(family, step)[0] + 1] for k in phase)

    def _phase(self, family, step: int) -> tuple[int, int, int | None]:
        """(index, first step, length or None for the last) of the phase ``step`` lies in."""
        phases, lengths = self.schedule(family), self.config.phase_steps
        lengths = [lengths] * len(phases) if isinstance(lengths, int) else list(lengths)
        lengths = (lengths + [None] * len(phases))[: len(phases) - 1] + [None]  # None: runs to the end
        start = 0
        for index, length in enumerate(lengths):
            if length is None or step < start + length:
                return index, start, length
            start += length
        raise AssertionError("unreachable: the last phase has no end")

    def cosine_span(self, family, step: int, total: int) -> tuple[int, int]:
        """With ``restart_lr``: the position in the phase and its length (the last phase's: to ``total``)."""
        if not self.config.restart_lr:
            return step, total
        _, start, length = self._phase(family, step)
        return step - start, max(1, length if length is not None else total - start)

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One nested step over the sub-models of the released dimensions (the rest at their largest)."""
        released = self.released(family, self.steps)
        if self.config.sort_width and self.steps > 0:
            new = set(released) - set(self.released(family, self.steps - 1))
            if new & SORTED_KINDS:  # weights, norm statistics, consumers' inputs and optimizer state alike
                sort_(family, optimizer=optimizer)
        optimizer.zero_grad(set_to_none=True)
        if released:
            part = Space([d if d.kind in released else Dimension(d.name, d.kind, (d.choices[-1],)) for d in family.space])
            archs = self.sampler(part, self.rng)
        else:
            archs = [family.space.max()]  # the first phase: the full network alone
        losses = nested_backward(family, archs, batch, self.config, teacher, task)
        optimizer.step()
        self.steps += 1
        return {"loss_largest": losses[0], "loss_mean": sum(losses) / len(losses), "phase": len(released)}
