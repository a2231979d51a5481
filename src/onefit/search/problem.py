"""A search problem: a space, the objectives to minimise, and constraints on any metric.

A metric is a function of an arch; ``cheap`` metrics (counts, a latency model's prediction) need
no forward pass, so searchers may compute them freely while screening candidates. Constraints are
upper bounds on metrics by name: ``constraints={"latency_ms": 2.0, "weight_bytes": 1e6}``.

>>> problem = toy_problem(constraints={"size": 30})
>>> problem.objectives
('loss', 'size')
>>> trial = problem.evaluate({"a": 4, "b": 2, "c": 8})
>>> trial.values, trial.violation
((0.015625, 8.0), 0.0)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from onefit.search.base import Trial, failed_values
from onefit.space import Arch, Dimension, Space


@dataclass(frozen=True)
class Metric:
    """A figure of an arch. ``cheap``: computed without running the sub-model.

    ``estimate``: for a costly measurement (a latency on the target runtime), a cheap prediction
    and its relative error, ``(value, error)``, or None while there is none. The problem then
    measures an arch only where it matters: its prediction is used instead when even the
    optimistic end of it (``value * (1 - error)``) leaves the arch dominated by one measured
    before, or over a constraint's bound.
    """

    fn: Callable[[Arch], float]
    cheap: bool = False
    estimate: Callable[[Arch], tuple[float, float] | None] | None = None


class ProblemError(ValueError):
    """Objectives or constraints a problem cannot have: an unknown metric, a bound nothing meets."""


class Problem:
    """Minimise ``objectives`` (metric names, in order) over ``space`` subject to ``constraints``.

    ``canonical`` maps an arch to the representative of the archs that are the same sub-model
    (``Family.canonical``: widths of skipped blocks do not matter); a search measures each once.
    """

    def __init__(self, space: Space, metrics: Mapping[str, Metric | Callable[[Arch], float]],
                 objectives: Sequence[str], constraints: Mapping[str, float] | None = None,
                 canonical: Callable[[Arch], Arch] | None = None):
        self.space = space
        self.canonical = canonical  # archs with the same canonical form are one sub-model
        self._keys: dict[str, str] = {}
        self.metrics = {k: m if isinstance(m, Metric) else Metric(m) for k, m in metrics.items()}
        self.objectives = tuple(objectives)
        self.constraints = dict(constraints or {})
        self._measured: list[tuple[float, ...]] = []  # objectives of the feasible trials measured in full
        unknown = [n for n in (*self.objectives, *self.constraints) if n not in self.metrics]
        if unknown:
            raise ProblemError(f"unknown metric(s) {unknown}; this problem has {sorted(self.metrics)}")
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ProblemError(f"objectives must be distinct metric names, at least one; got {list(objectives)}")
        self._check_satisfiable()

    def _check_satisfiable(self) -> None:
        """A cheap constraint that even the smallest arch breaks is one nothing satisfies (counts
        only grow with the arch): say so now rather than after a whole search."""
        smallest = self.space.min()
        for name, bound in self.constraints.items():
            if self.metrics[name].cheap and (least := self.metrics[name].fn(smallest)) > bound:
                raise ProblemError(f"no sub-model satisfies the constraint {name} <= {bound:g}: the smallest "
                                 f"arch already has {name} = {least:g}")

    @property
    def cheap(self) -> tuple[str, ...]:
        """Objectives computed without running the sub-model."""
        return tuple(n for n in self.objectives if self.metrics[n].cheap)

    def key(self, arch: Mapping[str, Any]) -> str:
        """The same string for archs that are the same sub-model (``canonical``), for deduplication."""
        exact = self.space.key(arch)
        if self.canonical is None:
            return exact
        if exact not in self._keys:  # searchers ask for thousands of candidates' keys
            # not validated against self.space: a subspace may leave out the value idle dimensions take
            self._keys[exact] = json.dumps(self.canonical(json.loads(exact)), sort_keys=True, separators=(",", ":"))
        return self._keys[exact]

    def compute(self, arch: Arch, names: Iterable[str]) -> dict[str, float]:
        return {n: float(self.metrics[n].fn(arch)) for n in names}

    def violation(self, measured: Mapping[str, float]) -> float:
        """Sum over the constraints in ``measured`` of how far each is exceeded, relative to its bound."""
        return sum(max(0.0, measured[n] - b) / max(abs(b), 1e-12) for n, b in self.constraints.items()
                   if n in measured)

    def cheap_violation(self, arch: Arch) -> float:
        """The part of the violation that cheap metrics alone determine."""
        return self.violation(self.compute(arch, [n for n in self.constraints if self.metrics[n].cheap]))

    def evaluate(self, arch: Mapping[str, Any]) -> Trial:
        """Measure ``arch``; an exception or a non-finite objective gives a failed Trial (with the
        reason), never an exception, so a search goes on. Metrics with an ``estimate`` are
        predicted where measuring would not change what the search keeps (``Trial.predicted``)."""
        arch = self.space.validate(arch)
        start = time.perf_counter()
        names = dict.fromkeys((*self.objectives, *self.constraints))
        estimable = [n for n in names if self.metrics[n].estimate is not None]
        try:
            measured = self.compute(arch, [n for n in names if n not in estimable])
            predicted = self._predicted(arch, measured, estimable)
            measured.update(predicted)
            measured.update(self.compute(arch, [n for n in estimable if n not in predicted]))
        except Exception as exc:  # recorded with the trial; search() stops if every trial fails
            return Trial(arch, None, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - start
        values = tuple(measured[n] for n in self.objectives)
        if (reason := failed_values(values)) is not None:
            return Trial(arch, None, metrics=measured, seconds=seconds, error=reason)
        trial = Trial(arch, values, self.violation(measured), measured, seconds, predicted=tuple(predicted))
        self.observe(trial)
        return trial

    def observe(self, trial: Trial) -> None:
        """Remember a trial measured in full (one this problem evaluated, or one a resumed search
        loaded), against which later archs' predictions are judged."""
        if trial.feasible and not trial.predicted:
            self._measured.append(trial.values)

    def _predicted(self, arch: Arch, measured: Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
        """The predictions of ``names`` if none of them needs measuring for ``arch``, else {}."""
        estimates = {n: self.metrics[n].estimate(arch) for n in names}
        if not names or any(e is None for e in estimates.values()):
            return {}
        low = {n: value * (1 - error) for n, (value, error) in estimates.items()}
        over = self.violation(measured) > 0 or any(low[n] > self.constraints[n] for n in low if n in self.constraints)
        best = tuple(low.get(n, measured.get(n)) for n in self.objectives)
        dominated = any(all(a <= b for a, b in zip(ref, best)) and ref != best for ref in self._measured)
        return {n: value for n, (value, _) in estimates.items()} if over or dominated else {}

    def describe(self) -> dict:
        """What makes two problems the same study: space, objectives, constraints."""
        return {"space": self.space.to_json(), "objectives": list(self.objectives),
                "constraints": self.constraints}


def toy_problem(constraints: Mapping[str, float] | None = None) -> Problem:
    """A tiny two-objective problem for tests and examples: ``loss`` falls as ``a`` and ``b`` grow,
    ``size`` rises; it has a known Pareto front and costs nothing to evaluate."""
    space = Space([Dimension("a", "width", (1, 2, 3, 4)), Dimension("b", "depth", (1, 2, 3)),
                   Dimension("c", "bits", (4, 8, 32))])

    def loss(arch: Arch) -> float:
        return 1.0 / (arch["a"] * arch["b"]) ** 2 + (0.05 if arch["c"] == 4 else 0.0)

    def size(arch: Arch) -> float:
        return arch["a"] * arch["b"] * arch["c"] / 8

    metrics = {"loss": Metric(loss), "size": Metric(size, cheap=True)}
    return Problem(space, metrics, ("loss", "size"), constraints)
