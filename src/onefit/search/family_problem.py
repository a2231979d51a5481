"""The standard problem over a trained family: error on validation data and the family's costs.

Metrics:
- ``error``: the task's metric of the extracted sub-model on ``data`` as a number to minimise
  (1 - top-1 accuracy for classification), after re-estimating its batch-norm statistics on
  ``calibration`` (each sub-model needs its own; BigNAS, OFA);
- ``params``, ``macs``, ``weight_bytes`` (at the arch's bit-widths where the family has them),
  ``activation_bytes``: counts, cheap;
- ``latency_ms``: a ``LatencyModel``'s prediction (cheap), when one is given or saved with the
  family; ``latency="measure"`` measures each sub-model on ONNX Runtime instead (not cheap);
- ``latency_ms@bN`` (``latency_ms@b1``, ``latency_ms@b64``, ...): as an objective or constraint,
  measured on ONNX Runtime at batch N for the sub-models that matter, and predicted for the rest
  by a latency model fitted from those measurements (``Trial.predicted`` says which).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from itertools import islice
from typing import Iterable, Mapping, Sequence

import torch

from onefit.cost.counts import costs
from onefit.search.problem import Metric, Problem
from onefit.space import Arch, Space
from onefit.tasks import ClassificationTask, Task, evaluate
from onefit.train.bn import BN_BATCHES, recalibrate_bn

COUNTS = ("params", "macs", "weight_bytes", "activation_bytes")


def family_problem(family, data: Iterable, *, objectives: Sequence[str] = ("error", "macs", "params"),
                   constraints: Mapping[str, float] | None = None, calibration: Iterable | None = None,
                   bn_batches: int = BN_BATCHES, latency=None, space: Space | None = None,
                   task: Task | None = None) -> Problem:
    """A Problem over ``family.space`` (or ``space``, a part of it: the same dimensions with some
    choices left out, e.g. bits fixed at 32); ``data`` yields validation batches of ``task``
    (classification ``(x, y)`` pairs by default).

    ``latency``: a ``LatencyModel``, ``"measure"``, or None (the family's saved ONNX Runtime
    batch-1 model if it has one; otherwise no ``latency_ms`` metric).
    """
    space = _subspace(family.space, space)
    task = task or ClassificationTask()
    # the same batches for every sub-model: re-estimation is then deterministic, and cheaper
    calibration = list(islice(calibration if calibration is not None else data, bn_batches))

    @lru_cache(maxsize=4096)
    def counts(key: str) -> dict:
        return costs(family, json.loads(key))

    def count(name: str):
        return lambda arch: counts(space.key(arch))[name]

    def error(arch: Arch) -> float:
        sub = family.extract(arch)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in sub.modules()):
            recalibrate_bn(sub, calibration, len(calibration), task)
        return task.error(evaluate(sub, data, task))

    metrics = {"error": Metric(error), **{n: Metric(count(n), cheap=True) for n in COUNTS}}
    latency_metric = _latency(family, latency)
    if latency_metric is not None:
        metrics["latency_ms"] = latency_metric
    for name in {*objectives, *(constraints or {})}:
        batch = re.fullmatch(r"latency_ms@b([1-9][0-9]*)", name)
        if batch:
            metrics[name] = _measured_latency(family, int(batch.group(1)))
        if name in STREAMING:
            metrics[name] = _streaming(family, name)
    return Problem(space, metrics, objectives, constraints, canonical=family.canonical)


def _subspace(full: Space, part: Space | None) -> Space:
    if part is None:
        return full
    if part.names != full.names:
        raise ValueError(f"space must have the family's dimensions {full.names}, got {part.names}")
    for dim in part:
        if not set(dim.choices) <= set(full[dim.name].choices):
            raise ValueError(f"space: {dim.name} choices {list(dim.choices)} are not among the family's "
                             f"{list(full[dim.name].choices)}")
    return part


STREAMING = ("step_macs", "step_latency_ms")  # per new frame, for streaming targets (onefit.continual)


def _streaming(family, name: str) -> Metric:
    """Per-step cost of a sub-model run one frame at a time on the family's example clip:
    ``step_macs`` (torch's FLOP counter) or ``step_latency_ms`` (eager, batch 1, measured)."""
    from onefit.streaming import continual

    clip = family.example_inputs[0][:1]

    def per_step(arch: Arch) -> float:
        stream = continual(family.extract(arch), clip)
        return stream.step_macs() if name == "step_macs" else stream.step_latency(repeats=50).median_ms

    return Metric(per_step)


def _measured_latency(family, batch: int) -> Metric:
    """``latency_ms@bN``: sub-models measured on ONNX Runtime at batch N (its example repeated).
    The measurements fit the family's latency model for that batch as they come
    (``family.latency_models["onnxruntime-bN"]``, refitted every few), so ``largest_within`` takes
    latency budgets; once it is fitted, a sub-model is measured only where it matters (the
    problem's ``Metric.estimate``): one that even ``PREDICTION_MARGIN`` faster than predicted
    would be dominated, or over a latency bound, keeps the prediction."""
    from onefit.cost.latency import measure_latency
    from onefit.cost.latency_model import FEATURES, LatencyModel

    examples = tuple(x.repeat(batch, *[1] * (x.dim() - 1)) for x in family.example_inputs)
    measured: list[tuple[Arch, float]] = []
    model = None  # the latency model this search fitted (a saved one may come from another machine)

    def estimate(arch: Arch) -> tuple[float, float] | None:
        if model is None:
            return None
        return model.predict(family, arch), max(PREDICTION_MARGIN, 3 * model.fit_error["mape"])

    def latency(arch: Arch) -> float:
        nonlocal model
        ms = measure_latency(family.extract(arch).eval(), examples, repeats=20, warmup=5).median_ms
        measured.append((arch, ms))
        n = len(measured)
        if n >= len(FEATURES) + 2 and (n - len(FEATURES) - 2) % REFIT_EVERY == 0:
            archs, times = zip(*measured)
            model = LatencyModel.fit(family, archs, times, backend="onnxruntime", batch=batch)
            family.latency_models[f"onnxruntime-b{batch}"] = model
        return ms

    return Metric(latency, estimate=estimate)


REFIT_EVERY = 4  # measurements between refits of the latency model a search fits
PREDICTION_MARGIN = 0.25  # the least relative error assumed of a latency prediction (3x its fit's MAPE if more)


def _latency(family, latency) -> Metric | None:
    if latency == "measure":
        from onefit.cost.latency import measure_latency

        return Metric(lambda arch: measure_latency(family.extract(arch).eval(), family.example_inputs).median_ms)
    model = latency if latency is not None else family.latency_models.get("onnxruntime-b1")
    if model is None:
        return None
    return Metric(lambda arch: model.predict(family, arch), cheap=True)
