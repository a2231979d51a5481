"""Search-free selection (SortedNet): the largest nested sub-model that fits a budget.

The space's nested chain orders sub-models so that each contains the previous one; cost grows
along it, so the answer is the last arch in the chain within budget.
"""

from __future__ import annotations

from onefit.cost import costs
from onefit.space import Arch

METRICS = ("params", "macs")


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

    >>> import torch, onefit
    >>> family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=2), (torch.randn(2, 1, 8, 8),))
    >>> arch = largest_within(family, params=5_000)
    >>> onefit.costs(family, arch)["params"] <= 5_000 < onefit.costs(family, family.space.max())["params"]
    True
    """
    unknown = sorted(set(budget) - set(METRICS))
    if not budget or unknown:
        raise BudgetError(f"budget must name one or more of {list(METRICS)}, got {sorted(budget)}")
    best = None
    for arch in family.space.nested_chain():
        cost = costs(family, arch)
        if all(cost[k] <= limit for k, limit in budget.items()):
            best = arch
    if best is None:
        smallest = costs(family, family.space.min())
        raise BudgetError(
            f"no sub-model fits {budget}; the smallest costs "
            + ", ".join(f"{k}={smallest[k]:,}" for k in budget)
        )
    return best
