"""Quantized distillation (Polino, Pascanu & Alistarh 2018, "Model compression via distillation and
quantization", section 3, Algorithm 1) as a training recipe, and plain quantization-aware training.

One step: the students are the family at uniform bit policies (every layer at ``b`` bits, see
``uniform_bits``) or at explicit archs. Their forward passes use the quantized weights, and the
gradient, passed straight through the quantizer, updates the full-precision weights (Algorithm 1,
lines 3-6). Each student's loss mixes the labels with the teacher's softened outputs,
``(1 - a) * CE(y) + a * T^2 * KL(p_teacher^T || p_student^T)`` (eq. 1 with Hinton et al.'s soft
targets; the task's distillation loss, as in SortedNet). The teacher is

- ``"inplace"``: the family's own largest sub-model at full precision, visited first on the same
  batch (and, with ``train_teacher``, trained on the labels in the same step, as in BigNAS);
- ``"external"``: a full-precision module passed to ``step`` (or ``onefit.train(..., teacher=)``);
- ``"none"``: no teacher; the students learn from the labels alone (quantization-aware training).

>>> import torch
>>> import onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (torch.randn(2, 1, 8, 8),),
...                            onefit.ElasticConfig(width=(1.0,), depth=False, bits=(4,)))
>>> recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(4,)))
>>> optimizer = torch.optim.SGD(family.parameters(), lr=0.1)
>>> out = recipe.step(family, (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))), optimizer)
>>> sorted(out)
['loss_largest', 'loss_mean']
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping

import torch

from onefit.elastic.quant import FULL, check_bits
from onefit.space import Arch, Space
from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train.recipe import Recipe, register_recipe
from onefit.train.sampler import uniform_bits

TEACHERS = ("inplace", "external", "none")


@dataclass(frozen=True)
class QuantizedDistillationConfig:
    bits: tuple[int, ...] = (4,)  # uniform bit policies, one student each (2, 3, 4 or 8)
    archs: tuple[Mapping, ...] = ()  # more students as (partial) archs: per-layer bits, narrower widths
    teacher: str = "inplace"  # "inplace" (the family's full-precision largest), "external" or "none"
    temperature: float = 2.0  # softens both distributions in the KL term
    distill_weight: float = 0.7  # a: share of the KL term in a student's loss (ignored without teacher)
    train_teacher: bool = True  # inplace only: the full-precision largest also learns from the labels
    seed: int = 0  # kept for the loop's resumable state; the students are fixed, not drawn

    def __post_init__(self) -> None:
        where = "QuantizedDistillationConfig"
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "archs", tuple(dict(a) for a in self.archs))
        for b in self.bits:
            if check_bits(b, f"{where}.bits") == FULL:
                raise ValueError(f"{where}.bits: students run below {FULL} bits; got {FULL}")
        if not self.bits and not self.archs:
            raise ValueError(f"{where}: give at least one student, in bits or archs")
        if self.teacher not in TEACHERS:
            raise ValueError(f"{where}.teacher: {self.teacher!r} is not one of {TEACHERS}")
        if self.temperature <= 0:
            raise ValueError(f"{where}.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"{where}.distill_weight must lie in [0, 1], got {self.distill_weight}")


@register_recipe
@dataclass
class QuantizedDistillationRecipe(Recipe):
    name = "quantized_distillation"
    config_type = QuantizedDistillationConfig
    config: QuantizedDistillationConfig = field(default_factory=QuantizedDistillationConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)  # the loop saves and restores it with checkpoints
        self._students: tuple[Space, list[Arch]] | None = None  # the last space asked for, and its students

    def students(self, space: Space) -> list[Arch]:
        """The archs this recipe trains: one per uniform bit policy, then the explicit ones. They are
        fixed for a space, so they are worked out once per space (the same object) and reused."""
        if self._students is None or self._students[0] is not space:
            if not any(d.kind == "bits" for d in space):
                raise ValueError("quantized distillation needs bits dimensions: elasticize with ElasticConfig(bits=...)")
            archs = [uniform_bits(space, b) for b in self.config.bits] + [space.complete(a) for a in self.config.archs]
            self._students = (space, archs)
        return [dict(a) for a in self._students[1]]  # copies: a caller may change them

    def _soft_targets(self, family, inputs, batch, task: Task, teacher, n: int) -> tuple[torch.Tensor | None, float | None]:
        """The teacher's logits (detached) and, for an in-place teacher, its task loss (backpropagated)."""
        cfg = self.config
        if cfg.teacher == "none":
            return None, None
        if cfg.teacher == "external":
            if teacher is None:
                raise ValueError("QuantizedDistillationConfig.teacher='external' needs a teacher module passed to step()")
            with torch.no_grad():
                return first_output(teacher(*inputs)), None
        grad = torch.enable_grad() if cfg.train_teacher else torch.no_grad()
        with grad, family.activate(family.space.max()):
            logits = first_output(family(*inputs))
        loss = task.loss(logits, batch)
        if cfg.train_teacher:
            (loss / n).backward()
        return logits.detach(), loss.item()

    def step(self, family, batch, optimizer: torch.optim.Optimizer, teacher: torch.nn.Module | None = None,
             task: Task | None = None) -> dict:
        """One optimizer step over the students of ``family`` on ``batch``.

        Returns ``loss_largest`` (the in-place teacher's task loss, else the first student's loss)
        and ``loss_mean`` (over the students)."""
        cfg = self.config
        task = task or ClassificationTask()
        inputs = task.inputs(batch)
        students = self.students(family.space)
        n = len(students) + (cfg.teacher == "inplace" and cfg.train_teacher)
        optimizer.zero_grad(set_to_none=True)
        soft, teacher_loss = self._soft_targets(family, inputs, batch, task, teacher, n)
        losses = []
        for arch in students:
            with family.activate(arch):
                logits = first_output(family(*inputs))  # quantized weights forward; the STE sends the gradient to the fp32 ones
            loss = task.student_loss(logits, batch, soft, cfg.distill_weight, cfg.temperature)
            (loss / n).backward()
            losses.append(loss.item())
        optimizer.step()
        largest = teacher_loss if teacher_loss is not None else losses[0]
        return {"loss_largest": largest, "loss_mean": sum(losses) / len(losses)}
