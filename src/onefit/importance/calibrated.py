"""Importance from calibration data, beside the weights' L1 norm.

- ``ActivationImportance`` (Minitron, Muralidharan et al. 2024, sec. 2.2): a channel's
  activation, averaged over the positions of each sample (the sequence, or the pixels), L2 norm
  over the samples; the aggregation the paper found best (mean over the sequence, L2 over the
  batch).
- ``TaylorImportance`` (Molchanov et al. 2017, first-order Taylor expansion): the loss change
  when a channel is zeroed, to first order: ``|mean over samples of sum over positions a * dL/da|``.

Both read a group's channels where they are consumed: at the input of every Linear and
convolution reading the group (for FFN neurons the down projection's input, for heads the
attention output the output projection reads, for the hidden size the normalised stream each
projection reads), each consumer's scores normalised to mean 1 and summed. The largest
sub-model runs in eval mode; no parameter's gradient is touched. A group no consumer reads
(the heads inside ``nn.MultiheadAttention``) falls back to the weights' L1 norm. Sorting by
either keeps the function: only which channels a prefix keeps changes.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
>>> scores = ActivationImportance(data).measure(family)
>>> [tuple(s.shape) for s in scores.values()]
[(16,)]
"""

from __future__ import annotations

from typing import Iterable

import torch

from onefit.importance.sort import L1Importance

READERS = ("linear", "conv", "conv_pass")  # layer kinds whose input shows a group's channels


class _Calibrated:
    def __init__(self, data: Iterable, task=None, batches: int = 8):
        if not isinstance(batches, int) or batches < 1:
            raise ValueError(f"{type(self).__name__}: batches must be a positive integer, got {batches!r}")
        self.data, self.task, self.batches = data, task, batches

    def __call__(self, producers) -> torch.Tensor:  # a group no consumer reads
        return L1Importance()(producers)

    def measure(self, family) -> dict[int, torch.Tensor]:
        """``{group id: channel scores}`` for every elastic group a Linear or convolution reads."""
        from onefit.tasks import ClassificationTask

        task, plan = self.task or ClassificationTask(), family.plan
        readers = {name: layer for name, layer in plan.layers.items() if layer.kind in READERS
                   and any(plan.groups[g].elastic for g in _groups_read(layer))}
        totals: dict[str, torch.Tensor] = {}
        seen, hooks, captured = 0, [], {}

        def capture(name):
            def pre(module, args):
                captured[name] = args[0]
            return pre

        for name in readers:
            hooks.append(family.module.get_submodule(name).register_forward_pre_hook(capture(name)))
        modes = {m: m.training for m in family.modules()}
        try:
            family.eval()
            with family.activate(family.space.max()):
                for i, batch in enumerate(self.data):
                    if i == self.batches:
                        break
                    captured.clear()
                    for name, per_sample in self.per_sample(family, task, batch, captured).items():
                        totals[name] = totals.get(name, 0) + per_sample.double()
                    seen += 1
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes.items():
                m.training = training
        if not seen:
            raise ValueError(f"{type(self).__name__}: the calibration data gave no batch")
        return _by_group(plan, readers, {name: self.finish(total, seen) for name, total in totals.items()})


class ActivationImportance(_Calibrated):
    """Minitron's activation importance on ``batches`` batches of ``data`` (see the module)."""

    def per_sample(self, family, task, batch, captured) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            family(*task._inputs_or_error(batch))
        return {name: (_positions(x, family.plan.layers[name], "mean") ** 2).sum(0) for name, x in captured.items()}

    def finish(self, total: torch.Tensor, batches: int) -> torch.Tensor:
        return total.sqrt()


class TaylorImportance(_Calibrated):
    """First-order Taylor importance on ``batches`` batches of ``data`` under ``task``'s loss."""

    def per_sample(self, family, task, batch, captured) -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            from onefit.tasks import first_output

            loss = task.loss(first_output(family(*task._inputs_or_error(batch))), batch)
            names = [n for n, x in captured.items() if x.requires_grad]
            grads = torch.autograd.grad(loss, [captured[n] for n in names], allow_unused=True)
        return {name: _positions((captured[name] * g).detach(), family.plan.layers[name], "sum").sum(0)
                for name, g in zip(names, grads) if g is not None}

    def finish(self, total: torch.Tensor, batches: int) -> torch.Tensor:
        return total.abs() / batches


def _groups_read(layer) -> list[int]:
    return [g for g, _ in layer.in_segments if g is not None] if layer.in_segments else \
        [] if layer.in_group is None else [layer.in_group]


def _positions(x: torch.Tensor, layer, how: str) -> torch.Tensor:
    """(samples, input features) from a layer's input, over its positions (``how``: mean or sum):
    a Linear's features are the last axis, a convolution's channels axis 1."""
    if layer.kind == "linear":
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, positions, features)
        return x.mean(1) if how == "mean" else x.sum(1)
    x = x.reshape(x.shape[0], x.shape[1], -1)  # (B, channels, positions)
    return x.mean(2) if how == "mean" else x.sum(2)


def _by_group(plan, readers: dict, scores: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Each group's channel scores: every reader's scores for it, normalised to mean 1, summed."""
    out: dict[int, torch.Tensor] = {}
    for name, layer in readers.items():
        if name not in scores:
            continue
        features = scores[name]
        unit = layer.in_unit  # input features per channel (a flattened C x H x W map has H*W)
        parts = layer.in_segments or ((layer.in_group, len(features) // unit),)  # (group, channels), side by side
        offset = 0
        for gid, size in parts:
            if gid is not None and plan.groups[gid].elastic:
                part = features[offset : offset + size * unit].view(size, unit).sum(1)
                out[gid] = out.get(gid, 0) + part / part.mean().clamp_min(1e-12)
            offset += size * unit
    return {gid: s.float() for gid, s in out.items()}
