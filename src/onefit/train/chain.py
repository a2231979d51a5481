"""Progressive distillation into a chain of students (Mamba-PKD, 2025; B-DISTIL, 2023).

A teacher is distilled into students trained one after another; each learns what the ensemble of
the ones before it still gets wrong: the k-th student is trained with the first k - 1 frozen, so
that their summed logits plus its own match the teacher (the task's student loss: labels mixed
with the teacher's softened outputs). The k-th deployable model is the ensemble of the first k
students (``chain.prefix(k)``), so one run yields a ladder from tiny to close to the teacher; a
prefix exports as one ONNX graph, and its cost is the sum of its students'.

>>> import torch, onefit
>>> students = [onefit.zoo.mlp(hidden=8, layers=1), onefit.zoo.mlp(hidden=16, layers=1)]
>>> chain = Chain(students, (torch.randn(2, 1, 8, 8),))
>>> [c["params"] for c in chain.costs()]  # the first student, then both
[626, 1868]
>>> tuple(chain.prefix(1)(torch.randn(3, 1, 8, 8)).shape)
(3, 10)
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train.recipe import Recipe, register_recipe


class Chain(nn.Module):
    """An additive ensemble of students: the output is the sum of the first ``active`` students' logits."""

    def __init__(self, students: list[nn.Module], example_inputs: tuple):
        super().__init__()
        if not students:
            raise ValueError("a chain needs at least one student")
        self.students = nn.ModuleList(students)
        self.example_inputs = tuple(example_inputs)
        self.active = len(students)
        with torch.no_grad():
            shapes = [tuple(first_output(s.eval()(*self.example_inputs)).shape) for s in students]
        for s in students:
            s.train()
        if len(set(shapes)) > 1:
            raise ValueError(f"the students of a chain must agree on their output (the number of classes); "
                             f"they give {shapes}")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return sum(first_output(s(*inputs)) for s in self.students[: self.active])

    def prefix(self, k: int) -> "Chain":
        """The ensemble of the first ``k`` students (a copy): the k-th model of the ladder."""
        if not 1 <= k <= len(self.students):
            raise ValueError(f"prefix: k must lie in 1..{len(self.students)}, got {k}")
        return Chain([copy.deepcopy(s) for s in self.students[:k]], self.example_inputs).train(self.training)

    def costs(self) -> list[dict[str, int]]:
        """Params and MACs (per sample, torch's FLOP counter / 2) of every prefix, cumulative."""
        rows, params, macs = [], 0, 0
        one = tuple(x[:1] for x in self.example_inputs)
        for student in self.students:
            counter = FlopCounterMode(display=False)
            was = student.training
            with torch.no_grad(), counter:
                student.eval()(*one)
            student.train(was)
            params += sum(p.numel() for p in student.parameters())
            macs += counter.get_total_flops() // 2
            rows.append({"params": params, "macs": macs})
        return rows


@dataclass(frozen=True)
class ProgressiveDistillationConfig:
    steps_per_student: int = 1000  # each student trains this many steps, the ones before it frozen
    temperature: float = 2.0
    distill_weight: float = 0.7  # a: share of the teacher's term in a student's loss (without a teacher: labels)
    seed: int = 0

    def __post_init__(self) -> None:
        where = "ProgressiveDistillationConfig"
        if self.steps_per_student < 1:
            raise ValueError(f"{where}.steps_per_student must be >= 1, got {self.steps_per_student}")
        if self.temperature <= 0 or not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"{where}: temperature > 0 and distill_weight in [0, 1], got {self.temperature}, "
                             f"{self.distill_weight}")


@register_recipe
@dataclass
class ProgressiveDistillationRecipe(Recipe):
    name = "progressive_distillation"
    config_type = ProgressiveDistillationConfig
    trains = "chain"  # a Chain of students
    config: ProgressiveDistillationConfig = field(default_factory=ProgressiveDistillationConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)  # the loop checkpoints it; the chain draws nothing
        self.steps = 0

    def describe(self) -> dict:
        return {"recipe": self.name, "config": asdict(self.config)}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])

    def student(self, chain: Chain) -> int:
        """The index of the student this step trains."""
        return min(self.steps // self.config.steps_per_student, len(chain.students) - 1)

    def step(self, chain: Chain, batch, optimizer: torch.optim.Optimizer, teacher: nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One step of the current student: the ensemble of the frozen ones before it plus its own
        logits, against the labels and (given one) the teacher."""
        if not isinstance(chain, Chain):
            raise TypeError(f"progressive distillation trains a Chain of students, got {type(chain).__name__}")
        task = task or ClassificationTask()
        k = self.student(chain)
        inputs = task.inputs(batch)
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            before = sum((first_output(s.eval()(*inputs)) for s in chain.students[:k]), torch.zeros(()))
            soft = first_output(teacher(*inputs)) if teacher is not None else None
        chain.students[k].train(chain.training)
        ensemble = before + first_output(chain.students[k](*inputs))
        loss = task.student_loss(ensemble, batch, soft, self.config.distill_weight, self.config.temperature)
        loss.backward()
        optimizer.step()
        self.steps += 1
        return {"loss_largest": loss.item(), "loss_mean": loss.item(), "student": k + 1}


def distill_chain(teacher: nn.Module, students: list[nn.Module], data: Iterable, *, epochs_per_student: int,
                  example_inputs: tuple, config: ProgressiveDistillationConfig | None = None, lr: float = 3e-3,
                  task: Task | None = None, progress: bool = True) -> Chain:
    """Distil ``teacher`` into ``students`` one after another, ``epochs_per_student`` passes each,
    a fresh Adam and cosine schedule per student (``onefit.train`` over the recipe). Returns the Chain."""
    from onefit.train.loop import train

    chain = Chain(students, example_inputs)
    n = len(data)
    recipe = ProgressiveDistillationRecipe(
        config or ProgressiveDistillationConfig(steps_per_student=epochs_per_student * n))
    if recipe.config.steps_per_student != epochs_per_student * n:
        raise ValueError(f"config.steps_per_student ({recipe.config.steps_per_student}) must be epochs_per_student x "
                         f"batches ({epochs_per_student * n})")
    teacher.eval()
    for student in chain.students:
        train(chain, data, recipe, epochs=epochs_per_student, task=task, teacher=teacher, progress=progress,
              optimizer=torch.optim.Adam(student.parameters(), lr=lr))
    return chain.eval()
