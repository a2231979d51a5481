"""The Task protocol, its registry, and ``evaluate``.

A task says what a batch holds (``inputs``, ``check``), how a model's output is scored for
training (``loss``) and for people (``metric`` over data, with ``higher_is_better``), how a
student learns a teacher's outputs (``distillation``, a loss of ``onefit.distill``), and the
metric as a number a search minimises (``error``). ``predict`` in ``metric`` maps a batch's
inputs to the output tensor, so the same code scores a PyTorch module and an ONNX file.

>>> model = nn.Linear(3, 2)
>>> with torch.no_grad():
...     _ = model.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])), model.bias.zero_()
>>> evaluate(model, [(torch.tensor([[2.0, 1, 0], [0, 3.0, 0]]), torch.tensor([0, 0]))])  # top-1 accuracy, %
50.0
"""

from __future__ import annotations

from typing import Callable, ClassVar, Iterable

import torch
from torch import nn

from onefit import distill

TASKS: dict[str, type] = {}


class DataError(ValueError):
    """Batches that do not match what the task or the family expects."""


def register_task(cls: type) -> type:
    """Class decorator: make ``cls`` known by its ``name`` (``onefit.tasks.TASKS``)."""
    TASKS[cls.name] = cls
    return cls


def first_output(output) -> torch.Tensor:
    """The first tensor of a module's output: a tensor, a tuple or list, or a dict-like model output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return first_output(next(iter(output.values())))
    return first_output(output[0])


class Task:
    """Base class of tasks; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    metric_name: ClassVar[str] = ""  # what ``metric`` returns, e.g. "accuracy %"
    higher_is_better: ClassVar[bool] = True
    distillation: ClassVar[str] = "kl"  # the onefit.distill loss a student learns a teacher with
    batch_format: ClassVar[str] = ""  # for error messages, e.g. "(inputs, labels) pairs"

    def inputs(self, batch) -> tuple[torch.Tensor, ...]:
        """The model's positional inputs in ``batch``."""
        raise NotImplementedError

    def check(self, batch, example_inputs: tuple, outputs: int | None = None) -> None:
        """Raise ``DataError`` unless ``batch`` has this task's format and fits ``example_inputs``."""
        inputs = self._inputs_or_error(batch)
        for x, example in zip(inputs, example_inputs):
            if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != tuple(example.shape[1:]):
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"the data yields inputs of shape {got}; the family was built for "
                                f"(batch, *{tuple(example.shape[1:])})")
            if x.dtype != example.dtype:
                raise DataError(f"the data yields inputs of dtype {str(x.dtype).removeprefix('torch.')}; the family "
                                f"was built for {str(example.dtype).removeprefix('torch.')} (convert them, e.g. x.float())")

    def _inputs_or_error(self, batch) -> tuple:
        try:
            return self.inputs(batch)
        except (TypeError, ValueError, IndexError, KeyError):
            raise DataError(f"the {self.name} task needs {self.batch_format}, got {type(batch).__name__}") from None

    def outputs(self, output: torch.Tensor) -> int | None:
        """The size labels index into (classes, vocabulary), from a model output; None: no labels."""
        return output.shape[-1]

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        """The training loss of ``output`` (the model's first output tensor) on ``batch``."""
        raise NotImplementedError

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """How a student's output learns the teacher's (``distillation``)."""
        return distill.loss(self.distillation, student, teacher, temperature)

    def student_loss(self, output: torch.Tensor, batch, teacher: torch.Tensor | None, weight: float,
                     temperature: float) -> torch.Tensor:
        """A student's loss: ``(1 - weight) * loss + weight * distill(output, teacher, T)``, or the
        task loss alone without a teacher or at weight 0 (Hinton et al. 2015; every recipe mixes so)."""
        loss = self.loss(output, batch)
        if teacher is None or weight <= 0:
            return loss
        return (1 - weight) * loss + weight * self.distill(output, teacher, temperature)

    def metric(self, predict: Callable[[tuple], torch.Tensor], data: Iterable) -> float:
        """The metric of ``predict`` over ``data``."""
        raise NotImplementedError

    def error(self, value: float) -> float:
        """``metric``'s value as a number to minimise, for a search's error objective."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"task": self.name}


def evaluate(module: nn.Module, data: Iterable, task: Task | None = None) -> float:
    """``task``'s metric (top-1 accuracy in percent by default) of ``module`` in eval mode over ``data``."""
    from onefit.tasks.classification import ClassificationTask

    task = task or ClassificationTask()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return task.metric(lambda inputs: first_output(module(*inputs)), data)
    finally:
        module.train(was_training)
