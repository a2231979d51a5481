"""``train``: the visible loop around a recipe's step, with a progress bar and resumable checkpoints."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from onefit.train.sorted import SortedNetRecipe


class DataError(ValueError):
    """Batches that do not match what the family was built for."""


def check_batch(family, batch) -> None:
    """Raise ``DataError`` unless ``batch`` is ``(x, y)`` with x shaped like the example input."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"the data must yield (inputs, labels) pairs, got {type(batch).__name__}")
    x, y = batch
    expected = tuple(family.example_inputs[0].shape[1:])
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != expected:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"the data yields inputs of shape {got}; the family was built for (batch, *{expected})")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.long:
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"the data yields labels {got}; expected class indices of shape ({x.shape[0]},) int64")


def evaluate(module: nn.Module, data: Iterable) -> float:
    """Top-1 accuracy of ``module`` (in eval mode) over ``(x, y)`` batches, in percent."""
    was_training = module.training
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in data:
            correct += (module(x).argmax(-1) == y).sum().item()
            total += len(y)
    module.train(was_training)
    return 100.0 * correct / max(total, 1)


def train(
    family,
    data: Iterable,
    recipe: SortedNetRecipe | None = None,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    teacher: nn.Module | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train every sub-model of ``family`` with ``recipe.step``, ``epochs`` passes over ``data``.

    The default optimizer is Adam (lr 3e-3). With ``checkpoint`` set, the family, the optimizer
    and the position are saved there after each epoch, and a later call with the same folder
    resumes from the last finished epoch. Returns the per-epoch history (also kept on the family).
    """
    from onefit.checkpoint import load_training_state, restore_, save_family

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    recipe = recipe or SortedNetRecipe()
    optimizer = optimizer or torch.optim.Adam(family.parameters(), lr=3e-3)
    start = 0
    if checkpoint is not None and (Path(checkpoint) / "family.json").exists():
        restore_(family, checkpoint)
        state = load_training_state(checkpoint, optimizer)
        start = state["epoch"]
        recipe.rng.setstate(_as_rng_state(state["rng"]))
    checked = False
    family.train()
    with _progress(progress) as bar:
        n = _len_or_none(data)
        task = bar.add_task("training family", total=None if n is None else (epochs - start) * n)
        for epoch in range(start, epochs):
            t0, losses = time.perf_counter(), []
            for batch in data:
                if not checked:
                    check_batch(family, batch)
                    checked = True
                losses.append(recipe.step(family, batch, optimizer, teacher=teacher))
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {losses[-1]['loss_largest']:.3f}")
            family.history.append({
                "epoch": epoch + 1,
                "seconds": round(time.perf_counter() - t0, 3),
                "loss_largest": sum(l["loss_largest"] for l in losses) / max(len(losses), 1),
                "loss_mean": sum(l["loss_mean"] for l in losses) / max(len(losses), 1),
                **recipe.describe(),
            })
            if checkpoint is not None:
                save_family(family, checkpoint, optimizer, {"epoch": epoch + 1, "rng": recipe.rng.getstate()})
    family.eval()
    return family.history


def _as_rng_state(state) -> tuple:
    # JSON turns random.getstate()'s tuples into lists; random wants them back as tuples.
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _len_or_none(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
