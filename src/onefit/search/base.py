"""The ask/tell protocol every searcher speaks, and the record of one evaluation.

A searcher is a config object (its constructor takes keyword settings only) that ``setup`` binds
to a problem; then ``ask()`` proposes an arch and ``tell(trial)`` reports what it measured, in any
order and from anywhere (a user with a cluster can evaluate asks elsewhere and tell them later).
Searchers never evaluate anything themselves, and never see each other.

>>> from onefit.search.problem import toy_problem
>>> from onefit.search.random_search import RandomSearch
>>> problem = toy_problem()
>>> searcher = RandomSearch(seed=0)
>>> searcher.setup(problem)
>>> arch = searcher.ask()
>>> searcher.tell(problem.evaluate(arch))
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from onefit.space import Arch, Space

if TYPE_CHECKING:
    from onefit.search.problem import Problem


@dataclass(frozen=True)
class Trial:
    """One evaluated arch.

    values: the objectives in the problem's order, all minimised; None when the evaluation failed.
    violation: how far the constraints are exceeded, summed relative to each bound (0: feasible).
    metrics: every figure measured (objectives, constraint metrics, anything else).
    predicted: the metrics whose value is a prediction, not a measurement (``Metric.estimate``).
    """

    arch: Arch
    values: tuple[float, ...] | None
    violation: float = 0.0
    metrics: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None  # why the evaluation failed
    predicted: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.values is None

    @property
    def feasible(self) -> bool:
        return not self.failed and self.violation == 0.0

    def to_json(self) -> dict:
        return {"arch": dict(self.arch), "values": None if self.values is None else list(self.values),
                "violation": self.violation, "metrics": dict(self.metrics), "seconds": self.seconds,
                "error": self.error, **({"predicted": list(self.predicted)} if self.predicted else {})}

    @classmethod
    def from_json(cls, data: Mapping) -> "Trial":
        values = data.get("values")
        return cls(dict(data["arch"]), None if values is None else tuple(values), data.get("violation", 0.0),
                   dict(data.get("metrics", {})), data.get("seconds", 0.0), data.get("error"),
                   tuple(data.get("predicted", ())))


def failed_values(values: tuple[float, ...]) -> str | None:
    """Why ``values`` cannot be used (NaN or infinite), or None."""
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    return f"objective value(s) {[values[i] for i in bad]} are not finite" if bad else None


class Searcher(ABC):
    """Proposes archs (``ask``) and learns from what they scored (``tell``).

    Subclasses set their own keyword settings in ``__init__`` and call ``super().__init__(seed=...)``;
    everything that depends on the problem is built in ``setup``. The same seed gives the same
    proposals for the same tells.
    """

    def __init__(self, *, seed: int = 0):
        self.seed = seed
        self.problem: Problem | None = None

    def setup(self, problem: "Problem") -> None:
        """Bind to ``problem``; forget anything learned before."""
        self.problem = problem
        self.rng = random.Random(self.seed)

    @property
    def space(self) -> Space:
        if self.problem is None:
            raise RuntimeError(f"{type(self).__name__}: call setup(problem) before ask() or tell()")
        return self.problem.space

    def key(self, arch: Arch) -> str:
        """The problem's key of ``arch``: archs that are the same sub-model share it, so "seen"
        sets keyed by it never propose a sub-model twice."""
        if self.problem is None:
            raise RuntimeError(f"{type(self).__name__}: call setup(problem) before ask() or tell()")
        return self.problem.key(arch)

    @abstractmethod
    def ask(self) -> Arch:
        """The next arch to evaluate (always one of the space)."""

    @abstractmethod
    def tell(self, trial: Trial) -> None:
        """Learn from one evaluation; failed trials (``trial.failed``) must be accepted."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                             if k not in ("problem", "rng") and not k.startswith("_"))
        return f"{type(self).__name__}({settings})"
