"""``train``: the one visible loop around any recipe's step, with a progress bar, a cosine
schedule, optional gradient noise, a check of every batch, and resumable checkpoints.

>>> import torch
>>> optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
>>> [(set_cosine_lr(optimizer, step, 4), round(optimizer.param_groups[0]["lr"], 4))[1] for step in range(5)]
[0.1, 0.0854, 0.05, 0.0146, 0.0]
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from onefit.checkpoint import load_training_state, read_manifest, save_family
from onefit.family import Family
from onefit.progress import progress_bar
from onefit.saved import restore_
from onefit.tasks import ClassificationTask, Task, first_output
from onefit.train import distributed, rng
from onefit.train.bn import BN_BATCHES
from onefit.train.noise import GradientNoise
from onefit.train.recipe import Recipe
from onefit.train.sorted import SortedNetRecipe


def output_size(model: nn.Module, example_inputs: tuple, task: Task) -> int | None:
    """The task's output size (classes, vocabulary) of ``model`` from one forward on the example."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = first_output(model(*example_inputs))
    model.train(was_training)
    return task.outputs(out)


def train(
    target: nn.Module,
    data: Iterable,
    recipe: Recipe | None = None,
    *,
    epochs: int,
    task: Task | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    teacher: nn.Module | None = None,
    checkpoint: str | Path | None = None,
    cosine: bool = True,
    gradient_noise: float | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train ``target`` (a family, or a plain module for recipes that train one) with
    ``recipe.step``, ``epochs`` passes over ``data`` of ``task`` batches (classification by default).

    The optimizer is the recipe's (``recipe.prepare``) or Adam at 3e-3; with ``cosine`` its
    learning rate decays to zero along a cosine over the whole run (or over each phase of a recipe
    in phases: ``recipe.cosine_span``), set from the step's position so a resumed run follows the
    same schedule. ``gradient_noise`` = eta adds annealed Gaussian
    noise of variance eta / (1 + t)^0.55 to every gradient before each step (Neelakantan et al.
    2015). With ``checkpoint`` (families only), the family, the optimizer, the position, every
    random state (the recipe's ``rng``, the loader's generator, torch's, numpy's, Python's, the
    noise's) and the recipe's ``state_dict()`` are saved there after each epoch, and a later call
    with the same folder resumes from the last finished epoch: on CPU its weights equal the
    uninterrupted run's bit for bit. A checkpoint already past ``epochs`` is refused. Every batch
    is checked against the task (format, shape, dtype, labels in range). Returns the per-epoch
    history (kept on a family as ``family.history``).

    ``teacher``: a trained model to distil from, outside the family (``SortedNetConfig(distill=
    "teacher")``, quantized distillation); it is put in eval mode and never trained. ``data`` is
    any iterable of batches: without ``len`` (an augmentation wrapper, a generator function's
    object) the batches of one pass are counted first for the schedule; a one-shot iterator needs
    ``cosine=False``.

    Started by ``torchrun`` (a process group of several ranks initialised), the loop trains data
    parallel (``onefit.train.distributed``): each rank its shard of every batch, the gradients
    averaged across ranks at each optimizer step, only rank 0 writing the checkpoint.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    recipe = recipe if recipe is not None else SortedNetRecipe()
    task = task if task is not None else ClassificationTask()
    family = target if isinstance(target, Family) else None
    if checkpoint is not None and family is None:
        raise ValueError("checkpoints hold families: pass a Family, or checkpoint=None for a plain module")
    n = _batches(data)
    if cosine and n is None:
        raise ValueError(f"a cosine schedule needs data it can pass over more than once (a list, a DataLoader, any "
                         f"iterable object); "
                         f"got a one-shot {type(data).__name__}: pass cosine=False for a stream")
    group = distributed.current()
    if group is not None:
        distributed.check_loader(data, group.world)
    outputs = output_size(family, family.example_inputs, task) if family is not None else None
    if teacher is not None:  # a teacher in train mode would update its batch-norm statistics on every batch
        teacher.eval()
    optimizer = optimizer or recipe.prepare(target) or torch.optim.Adam(target.parameters(), lr=3e-3)
    seed = getattr(getattr(recipe, "config", None), "seed", 0)  # the recipe's seed drives the noise too
    noise = GradientNoise(optimizer, gradient_noise, seed=seed) if gradient_noise else None
    start = 0
    if checkpoint is not None and (Path(checkpoint) / "family.json").exists():
        held = _epochs_held(checkpoint)
        if held > epochs:
            raise ValueError(f"{checkpoint} already holds {held} epochs of training; epochs={epochs} asks for "
                             f"fewer. Pass epochs > {held} to train on, or another checkpoint folder to start anew")
        start = _resume(family, checkpoint, optimizer, recipe, data, noise)
        if start == epochs:
            warnings.warn(f"{checkpoint} already holds all {epochs} epochs; nothing left to train", stacklevel=2)
            family.eval()
            return family.history
    history = family.history if family is not None else []
    example = family.example_inputs if family is not None else None
    stepper = noise or optimizer
    if group is not None:  # one starting point, then gradients averaged at every step
        distributed.broadcast_module(target)
        # rank 0's random states on every rank: the same batches in the same order, the same
        # sub-models, whatever each rank did with the loader before (a data check, say)
        rng.restore(distributed.broadcast_object(rng.capture(recipe, data)), recipe, data)
        stepper = distributed.SyncedOptimizer(stepper, group.world)
    if family is not None and start == 0:
        _observe_ranges(family, data)
    target.train(recipe.train_mode)
    with progress_bar(progress and (group is None or group.leader)) as bar:  # one bar, rank 0's
        job = bar.add_task(f"training {'family' if family is not None else 'model'}",
                           total=None if n is None else (epochs - start) * n)
        for epoch in range(start, epochs):
            t0, losses = time.perf_counter(), []
            for i, batch in enumerate(data):
                example = example or task.inputs(batch)  # a plain module: batches must agree with the first
                task.check(batch, example, outputs)  # every batch: cheap, and a stream can change
                if group is not None:
                    batch = distributed.shard(batch, group.rank, group.world)
                if cosine:
                    set_cosine_lr(optimizer, *recipe.cosine_span(target, epoch * n + i, epochs * n))
                losses.append(recipe.step(target, batch, stepper, teacher=teacher, task=task))
                bar.update(job, advance=1, description=f"epoch {epoch + 1}/{epochs} loss {losses[-1]['loss_largest']:.3f}")
            largest, mean = (sum(l[k] for l in losses) / max(len(losses), 1) for k in ("loss_largest", "loss_mean"))
            if group is not None:  # the epoch's losses over the whole batch; one set of statistics
                largest, mean = distributed.mean_across_ranks([largest, mean])
                distributed.average_buffers(target)
            history.append({
                "epoch": epoch + 1,
                "seconds": round(time.perf_counter() - t0, 3),
                "loss_largest": largest,
                "loss_mean": mean,
                **recipe.describe(),
                **({"task": task.name} if task.name != "classification" else {}),
                **({"gradient_noise": gradient_noise} if gradient_noise else {}),
            })
            if family is not None:
                _observe_ranges(family, data)
            if checkpoint is not None and (group is None or group.leader):
                save_family(family, checkpoint, optimizer, _progress(recipe, epoch + 1, data, noise))
            if group is not None:  # the others go on once the checkpoint is whole
                distributed.barrier()
    target.eval()
    return history


def _observe_ranges(family: Family, data) -> None:
    """A family that quantizes activations (``ElasticConfig(activation_bits=...)``): their ranges
    observed anew on the first ``BN_BATCHES`` batches, at the largest sub-model in full precision,
    before training and after every epoch, so that quantization-aware training sees ranges that
    follow the weights as they learn (and a family needs no separate calibration before training)."""
    from onefit.elastic.quant import ActivationQuantizer, calibrate_

    quantizers = [m for m in family.modules() if isinstance(m, ActivationQuantizer)]
    if not quantizers:
        return
    for quantizer in quantizers:
        quantizer.reset()
    calibrate_(family, itertools.islice(data, BN_BATCHES))


def set_cosine_lr(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """lr = initial_lr * (1 + cos(pi * step / total)) / 2 (Loshchilov & Hutter 2017, no restarts)."""
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / total))


def train_plain(model: nn.Module, data, epochs: int, lr: float = 3e-3, progress: bool = True) -> nn.Module:
    """Ordinary training of one model with the same loop, optimizer and schedule as a family's:
    the baseline a family is compared with. Returns ``model`` in eval mode."""
    from onefit.train.plain import PlainRecipe

    train(model, data, PlainRecipe(), epochs=epochs, optimizer=torch.optim.Adam(model.parameters(), lr=lr),
          progress=progress)
    return model


def _epochs_held(checkpoint) -> int:
    return read_manifest(checkpoint).get("progress", {}).get("epoch", 0)


def _resume(family, checkpoint, optimizer, recipe, data, noise) -> int:
    """Load a training checkpoint into ``family``, ``optimizer``, ``recipe`` and every random
    state; returns the number of epochs it holds."""
    restore_(family, checkpoint)
    state = load_training_state(checkpoint, optimizer)
    if "random" in state:
        rng.restore(state["random"], recipe, data)
    else:  # written before onefit saved every random state: the recipe's alone
        recipe.rng.setstate(rng.as_tuple(state["rng"]))
    if noise is not None:
        if "noise" not in state:
            raise ValueError(f"{checkpoint} was trained without gradient noise; resume it with gradient_noise=None")
        noise.load_state_dict(state["noise"])
    if "recipe" in state:
        recipe.load_state_dict(state["recipe"])
    return state["epoch"]


def _progress(recipe, epoch: int, data, noise) -> dict:
    """What resuming needs: the epoch, every random state and the recipe's state (JSON-able)."""
    progress = {"epoch": epoch, "random": rng.capture(recipe, data), "recipe": recipe.state_dict()}
    if noise is not None:
        progress["noise"] = noise.state_dict()
    return progress


def _batches(data) -> int | None:
    """Batches in one pass over ``data``: its ``len``, else counted when it can be passed over again
    (an object whose ``iter`` is not itself); None for a one-shot iterator."""
    try:
        return len(data)
    except TypeError:
        pass
    if iter(data) is data:
        return None
    return sum(1 for _ in data)
