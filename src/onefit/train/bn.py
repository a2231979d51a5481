"""Batch-norm re-estimation for a sub-model (BigNAS, OFA).

Running statistics accumulated while training many sub-models describe none of them well, so
before evaluating a sub-model its statistics are recomputed on a few training batches.

>>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
>>> x = torch.randn(64, 3) * 5 + 2
>>> bn = recalibrate_bn(model, [x], batches=1)[1]
>>> torch.allclose(bn.running_mean, model[0](x).mean(0).detach(), atol=1e-5)
True
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable

import torch
from torch import nn


BN_BATCHES = 20  # batches a sub-model's batch-norm statistics are re-estimated on, wherever that happens


def recalibrate_bn(module: nn.Module, data: Iterable, batches: int = BN_BATCHES, task=None) -> nn.Module:
    """Reset every batch norm of ``module`` and re-estimate it as an exact average over
    ``batches`` batches of ``data`` (the task's batches; by default pairs ``(x, y)`` or inputs).
    Returns ``module`` in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return module.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    module.train()
    with torch.no_grad():
        for batch in islice(data, batches):
            if task is not None:
                module(*task.inputs(batch))
            else:
                module(batch[0] if isinstance(batch, (tuple, list)) else batch)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return module.eval()
