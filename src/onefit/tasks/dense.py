"""Dense prediction (segmentation): ``(images, masks)`` batches, per-pixel cross-entropy, mean IoU.

Masks are class indices of shape ``(batch, H, W)``; the model's first output is ``(batch, classes,
H, W)``. Pixels labelled ``ignore_index`` count in neither. Mean IoU (in percent) averages the
intersection over union of every class that occurs in the labels or the predictions.

>>> import torch
>>> task = DensePredictionTask()
>>> mask = torch.tensor([[[0, 1], [1, 1]]])
>>> perfect = lambda inputs: torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float()
>>> task.metric(perfect, [(torch.zeros(1, 3, 2, 2), mask)])
100.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onefit.tasks.base import DataError, Task, register_task


@register_task
class DensePredictionTask(Task):
    name = "dense"
    metric_name = "mean IoU %"
    batch_format = "(images, masks) pairs, masks of shape (batch, H, W) int64"

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = ignore_index

    def inputs(self, batch) -> tuple[torch.Tensor, ...]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(type(batch).__name__)
        return (batch[0],)

    def check(self, batch, example_inputs: tuple, outputs: int | None = None) -> None:
        super().check(batch, example_inputs, outputs)
        x, mask = batch
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.long or mask.dim() != 3 or mask.shape[0] != x.shape[0]:
            got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise DataError(f"the {self.name} task needs {self.batch_format}; got masks {got}")
        kept = mask[mask != self.ignore_index]
        if outputs is not None and kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= outputs):
            raise DataError(f"the masks hold classes {int(kept.min())} to {int(kept.max())}; the model has {outputs}")

    def outputs(self, output: torch.Tensor) -> int:
        return output.shape[1]  # (batch, classes, H, W)

    def loss(self, output: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(output, batch[1], ignore_index=self.ignore_index)

    def metric(self, predict, data) -> float:
        confusion = None
        for batch in data:
            out, mask = predict(self.inputs(batch)), batch[1]
            classes = out.shape[1]
            keep = mask != self.ignore_index
            pairs = mask[keep] * classes + out.argmax(1)[keep]  # (label, prediction) as one index
            counts = torch.bincount(pairs, minlength=classes * classes).reshape(classes, classes)
            confusion = counts if confusion is None else confusion + counts
        if confusion is None:
            return 0.0
        hits = confusion.diag().double()
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        present = union > 0
        return 100.0 * (hits[present] / union[present]).mean().item() if present.any() else 0.0

    def error(self, value: float) -> float:
        return 1.0 - value / 100.0
