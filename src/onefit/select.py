"""Search-free selection (SortedNet): the largest nested sub-model that fits a budget.

The space's nested chain orders sub-models so that each contains the previous one; cost grows
along it, so the answer is the last arch in the chain within budget.
"""

from __future__ import annotations

import re

from onefit.cost import costs
from onefit.space import Arch

METRICS = ("params", "macs")  # counted; latency_ms / latency_ms@bN are predicted (latency_budget)


def latency_batch(name: str) -> int | None:
    """The batch a latency budget names: ``latency_ms`` is batch 1, ``latency_ms@b64`` batch 64."""
    if name == "latency_ms":
        return 1
    match = re.fullmatch(r"latency_ms@b([1-9][0-9]*)", name)
    return int(match.group(1)) if match else None


class BudgetError(ValueError):
    """No sub-model fits the budget, or the budget names an unknown metric."""


def distinct_chain(family) -> list[Arch]:
    """The nested chain without the archs that cost no more than the one before (growing a block
    the arch skips changes nothing), smallest first."""
    chain, last = [], -1
    for arch in family.space.nested_chain():
        params = costs(family, arch)["params"]
        if params > last:
            chain.append(arch)
            last = params
    return chain


def largest_within(family, **budget: float) -> Arch:
    """The largest arch of ``family``'s nested chain with every named cost within budget.

    Costs: ``params`` and ``macs`` (counted), ``latency_ms`` (batch 1) and ``latency_ms@bN``
    (``**{"latency_ms@b64": 5.0}``), predicted by the family's latency model for ONNX Runtime at
    that batch: a search with a ``latency_ms@bN`` objective fits it from its own measurements.

    >>> import torch, onefit
    >>> family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=2), (torch.randn(2, 1, 8, 8),))
    >>> arch = largest_within(family, params=5_000)
    >>> onefit.costs(family, arch)["params"] <= 5_000 < onefit.costs(family, family.space.max())["params"]
    True
    """
    unknown = sorted(n for n in budget if n not in METRICS and latency_batch(n) is None)
    if not budget or unknown:
        raise BudgetError(f"budget must name one or more of {[*METRICS, 'latency_ms', 'latency_ms@bN']}, "
                          f"got {sorted(budget)}")
    models = {}
    for name in budget:
        batch = latency_batch(name)
        if batch is not None:
            models[name] = family.latency_models.get(f"onnxruntime-b{batch}")
            if models[name] is None:
                raise BudgetError(f"{name}: the family has no latency model for ONNX Runtime at batch {batch}; search "
                                  f"with a latency_ms@b{batch} objective or constraint first (it fits one from its "
                                  f"measurements), or fit one with onefit.cost.latency_model.LatencyModel.fit")
    def cost(arch: Arch) -> dict:
        return {**costs(family, arch), **{name: model.predict(family, arch) for name, model in models.items()}}

    best = None
    for arch in family.space.nested_chain():
        if all(value <= budget[k] for k, value in cost(arch).items() if k in budget):
            best = arch
    if best is None:
        smallest = cost(family.space.min())
        raise BudgetError(
            f"no sub-model fits {budget}; the smallest costs "
            + ", ".join(f"{k}={smallest[k]:,.4g}" if k in models else f"{k}={smallest[k]:,}" for k in budget)
        )
    return best
