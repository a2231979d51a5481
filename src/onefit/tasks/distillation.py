"""Distillation only: no labels; the model learns a teacher's outputs.

A batch is the inputs (a tensor, or a tuple whose first items are the inputs; labels, if any,
are ignored). The loss is ``onefit.distill``'s ``kind`` between the model's and the teacher's
outputs; the metric is agreement (the share of samples whose top output is the teacher's, in
percent) for logits, or the mean cosine similarity for embeddings (``kind="cosine"``).

>>> import torch
>>> teacher = torch.nn.Linear(3, 2)
>>> task = DistillationTask(teacher)
>>> x = torch.randn(5, 3)
>>> task.metric(lambda inputs: teacher(*inputs), [x])
100.0
"""

from __future__ import annotations

import torch
from torch import nn

from onefit import distill
from onefit.tasks.base import Task, first_output, register_task


@register_task
class DistillationTask(Task):
    name = "distillation"
    batch_format = "inputs (a tensor, or a tuple starting with the inputs)"

    def __init__(self, teacher: nn.Module, kind: str = "kl", temperature: float = 1.0, n_inputs: int = 1):
        if kind not in distill.LOSSES:
            raise ValueError(f"DistillationTask.kind: {kind!r} is not one of {sorted(distill.LOSSES)}")
        self.teacher, self.kind, self.temperature, self.n_inputs = teacher, kind, temperature, n_inputs
        self.distillation = kind
        self._last: tuple | None = None  # (inputs, their versions, the teacher's output) of the last call
        self.metric_name = "cosine to the teacher" if kind == "cosine" else "agreement with the teacher %"

    def inputs(self, batch) -> tuple[torch.Tensor, ...]:
        if isinstance(batch, torch.Tensor):
            return (batch,)
        if not isinstance(batch, (tuple, list)) or len(batch) < self.n_inputs:
            raise TypeError(type(batch).__name__)
        return tuple(batch[: self.n_inputs])

    def outputs(self, output: torch.Tensor) -> None:
        return None  # no labels to check

    def target(self, inputs: tuple) -> torch.Tensor:
        """The teacher's output on ``inputs``; the sub-models of one step share a batch, so the
        last one is kept and reused while the same, unchanged tensors come again."""
        versions = tuple(x._version for x in inputs)
        if self._last is not None and len(self._last[0]) == len(inputs) and all(
                a is b for a, b in zip(self._last[0], inputs)) and self._last[1] == versions:
            return self._last[2]
        with torch.no_grad():
            out = first_output(self.teacher(*inputs))
        self._last = (inputs, versions, out)
        return out

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return distill.loss(self.kind, output, self.target(self.inputs(batch)), self.temperature)

    def metric(self, predict, data) -> float:
        total, count = 0.0, 0
        for batch in data:
            inputs = self.inputs(batch)
            out, want = predict(inputs), self.target(inputs)
            if self.kind == "cosine":
                total += torch.nn.functional.cosine_similarity(out.flatten(1), want.flatten(1), dim=1).sum().item()
            else:  # the share of each sample's positions (one, or its tokens) where the top outputs agree
                agree = (out.argmax(-1) == want.argmax(-1)).float()
                total += 100.0 * agree.reshape(len(agree), -1).mean(1).sum().item()
            count += len(inputs[0])
        return total / max(count, 1)

    def error(self, value: float) -> float:
        return 1.0 - value if self.kind == "cosine" else 1.0 - value / 100.0

    def describe(self) -> dict:
        return {"task": self.name, "kind": self.kind, "temperature": self.temperature}
