"""Language modelling: batches of token ids, next-token cross-entropy, perplexity.

A batch is a ``(batch, tokens)`` tensor of ids, or a tuple whose first item is one. The model's
first output is the logits ``(batch, tokens, vocabulary)``; position t predicts token t + 1.

>>> import torch
>>> task = LanguageModelingTask()
>>> ids = torch.tensor([[0, 1, 2, 3]])
>>> uniform = lambda inputs: torch.zeros(1, 4, 8)  # every token equally likely among 8
>>> round(task.metric(uniform, [ids]), 3)
8.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from onefit.tasks.base import DataError, Task, register_task


@register_task
class LanguageModelingTask(Task):
    name = "language_modeling"
    metric_name = "perplexity"
    higher_is_better = False
    batch_format = "token ids of shape (batch, tokens), int64 (or a tuple starting with them)"

    def inputs(self, batch) -> tuple[torch.Tensor, ...]:
        ids = batch if isinstance(batch, torch.Tensor) else batch[0]
        if not isinstance(ids, torch.Tensor):
            raise TypeError(type(ids).__name__)
        return (ids,)

    def check(self, batch, example_inputs: tuple, outputs: int | None = None) -> None:
        (ids,) = self._inputs_or_error(batch)
        if ids.dim() != 2 or ids.dtype != torch.long or ids.shape[1] < 2:
            raise DataError(f"the {self.name} task needs {self.batch_format} with at least 2 tokens; got "
                            f"{tuple(ids.shape)} {str(ids.dtype).removeprefix('torch.')}")
        if outputs is not None and len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= outputs):
            raise DataError(f"token ids range from {int(ids.min())} to {int(ids.max())}; the vocabulary has {outputs}")

    def _nll(self, logits: torch.Tensor, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        # (B, T-1, V) against the next tokens (B, T-1)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction=reduction)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return self._nll(output, self.inputs(batch)[0])

    def metric(self, predict, data) -> float:
        total, tokens = 0.0, 0
        for batch in data:
            (ids,) = self.inputs(batch)
            total += self._nll(predict((ids,)), ids, "sum").item()
            tokens += ids[:, 1:].numel()
        return math.exp(total / max(tokens, 1))

    def error(self, value: float) -> float:
        return math.log(value)  # the mean next-token cross-entropy
