"""``train``: the visible loop around a recipe's step, with a progress bar and resumable checkpoints."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from onefit.checkpoint import load_training_state, restore_, save_family
from onefit.progress import progress_bar
from onefit.train import rng
from onefit.train.sorted import SortedNetRecipe


class DataError(ValueError):
    """Batches that do not match what the family was built for."""


def check_batch(family, batch, classes: int | None = None) -> None:
    """Raise ``DataError`` unless ``batch`` is ``(x, y)`` with x shaped and typed like the example
    input and y class indices (in ``range(classes)`` when given)."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise DataError(f"the data must yield (inputs, labels) pairs, got {type(batch).__name__}")
    x, y = batch
    example = family.example_inputs[0]
    expected = tuple(example.shape[1:])
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != expected:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"the data yields inputs of shape {got}; the family was built for (batch, *{expected})")
    if x.dtype != example.dtype:
        raise DataError(f"the data yields inputs of dtype {str(x.dtype).removeprefix('torch.')}; the family was "
                        f"built for {str(example.dtype).removeprefix('torch.')} (convert them, e.g. x.float())")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype != torch.long:
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise DataError(f"the data yields labels {got}; expected class indices of shape ({x.shape[0]},) int64")
    if classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise DataError(f"the data yields labels from {int(y.min())} to {int(y.max())}; the model has {classes} "
                        f"outputs, so labels must lie in 0..{classes - 1}")


def output_classes(family) -> int:
    """The number of outputs (classes) of the largest sub-model, from one forward on the example."""
    was_training = family.training
    family.eval()
    with torch.no_grad():
        out = family(*family.example_inputs)
    family.train(was_training)
    while not isinstance(out, torch.Tensor):  # a tuple or a dict-like model output: its first tensor
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out.shape[-1]


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
    cosine: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train every sub-model of ``family`` with ``recipe.step``, ``epochs`` passes over ``data``.

    The default optimizer is Adam (lr 3e-3); with ``cosine`` its learning rate decays to zero
    along a cosine over the whole run, set from the step's position so a resumed run follows the
    same schedule. With ``checkpoint`` set, the family, the optimizer, the position, every random
    state (the recipe's ``rng``, the loader's generator, torch's, numpy's and Python's) and the
    recipe's ``state_dict()`` (for recipes that have one) are saved there after each epoch, and a
    later call with the same folder resumes from the last finished epoch: on CPU its weights equal
    the uninterrupted run's bit for bit. A checkpoint already past ``epochs`` is refused. Every
    batch is checked (shape, dtype, labels in range). Returns the per-epoch history (also kept on
    the family).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    recipe = recipe or SortedNetRecipe()
    optimizer = optimizer or torch.optim.Adam(family.parameters(), lr=3e-3)
    start = 0
    if checkpoint is not None and (Path(checkpoint) / "family.json").exists():
        start = _resume(family, checkpoint, optimizer, recipe, data)
        if start > epochs:
            raise ValueError(f"{checkpoint} already holds {start} epochs of training; epochs={epochs} asks for "
                             f"fewer. Pass epochs > {start} to train on, or another checkpoint folder to start anew")
        if start == epochs:
            warnings.warn(f"{checkpoint} already holds all {epochs} epochs; nothing left to train", stacklevel=2)
            family.eval()
            return family.history
    n = _len_or_none(data)
    if cosine and n is None:
        raise ValueError("a cosine schedule needs data with a length; pass cosine=False for a stream")
    classes = output_classes(family)
    family.train()
    with progress_bar(progress) as bar:
        task = bar.add_task("training family", total=None if n is None else (epochs - start) * n)
        for epoch in range(start, epochs):
            t0, losses = time.perf_counter(), []
            for i, batch in enumerate(data):
                check_batch(family, batch, classes)  # every batch: cheap, and a stream can change
                if cosine:
                    set_cosine_lr(optimizer, epoch * n + i, epochs * n)
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
                save_family(family, checkpoint, optimizer, _progress(recipe, epoch + 1, data))
    family.eval()
    return family.history


def _resume(family, checkpoint, optimizer, recipe, data) -> int:
    """Load a training checkpoint into ``family``, ``optimizer``, ``recipe`` and every random
    state; returns the number of epochs it holds."""
    restore_(family, checkpoint)
    state = load_training_state(checkpoint, optimizer)
    if "random" in state:
        rng.restore(state["random"], recipe, data)
    else:  # written before onefit saved every random state: the recipe's alone
        recipe.rng.setstate(rng._as_tuple(state["rng"]))
    load_state = getattr(recipe, "load_state_dict", None)  # optional, as state_dict in _progress
    if load_state is not None and "recipe" in state:
        load_state(state["recipe"])
    return state["epoch"]


def set_cosine_lr(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """lr = initial_lr * (1 + cos(pi * step / total)) / 2 (Loshchilov & Hutter 2017, no restarts)."""
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / total))


def train_plain(model: nn.Module, data, epochs: int, lr: float = 3e-3, progress: bool = True) -> nn.Module:
    """Ordinary training of one model with the same optimizer and schedule as ``train``: the
    baseline a family is compared with. Returns ``model`` in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with progress_bar(progress) as bar:
        task = bar.add_task("training model", total=epochs * len(data))
        for epoch in range(epochs):
            for i, (x, y) in enumerate(data):
                set_cosine_lr(optimizer, epoch * len(data) + i, epochs * len(data))
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                bar.update(task, advance=1)
    return model.eval()


def _progress(recipe, epoch: int, data) -> dict:
    """What resuming needs: the epoch, every random state and, if the recipe keeps one, its state
    (JSON-able)."""
    progress = {"epoch": epoch, "random": rng.capture(recipe, data)}
    state_dict = getattr(recipe, "state_dict", None)  # optional: recipes without state have none
    if state_dict is not None:
        progress["recipe"] = state_dict()
    return progress


def _len_or_none(data) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None
