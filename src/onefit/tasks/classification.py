"""Classification: ``(inputs, labels)`` batches, cross-entropy, top-1 accuracy in percent.

>>> import torch
>>> task = ClassificationTask()
>>> batch = (torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
>>> task.metric(lambda inputs: torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]]), [batch])
75.0
>>> task.error(75.0)
0.25
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onefit.tasks.base import DataError, Task, register_task


@register_task
class ClassificationTask(Task):
    name = "classification"
    metric_name = "accuracy %"
    batch_format = "(inputs, labels) pairs"

    def inputs(self, batch) -> tuple[torch.Tensor, ...]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(type(batch).__name__)
        return (batch[0],)

    def check(self, batch, example_inputs: tuple, outputs: int | None = None) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(f"the data must yield (inputs, labels) pairs, got {type(batch).__name__}")
        super().check(batch, example_inputs, outputs)
        x, y = batch
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.long:
            got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise DataError(f"the data yields labels {got}; expected class indices of shape ({x.shape[0]},) int64")
        if outputs is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= outputs):
            raise DataError(f"the data yields labels from {int(y.min())} to {int(y.max())}; the model has {outputs} "
                            f"outputs, so labels must lie in 0..{outputs - 1}")

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(output, batch[1])

    def metric(self, predict, data) -> float:
        correct = total = 0
        for batch in data:
            correct += (predict(self.inputs(batch)).argmax(-1) == batch[1]).sum().item()
            total += len(batch[1])
        return 100.0 * correct / max(total, 1)

    def error(self, value: float) -> float:
        return 1.0 - value / 100.0
