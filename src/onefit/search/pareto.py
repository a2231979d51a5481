"""The Pareto front of a search: its hypervolume, picking one arch under constraints, JSON/CSV.

>>> from onefit.search.problem import toy_problem
>>> problem = toy_problem()
>>> front = Front([problem.evaluate({"a": a, "b": 3, "c": 8}) for a in (1, 2, 4)], problem.objectives)
>>> [t.arch["a"] for t in front]
[4, 2, 1]
>>> front.best(size=6.0).arch["a"]
2
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from onefit.search.base import Trial


class Front:
    """The non-dominated feasible trials among ``trials``, sorted by the first objective.

    ``evaluated`` keeps every trial given (failed and infeasible included) for plots and counts.
    """

    def __init__(self, trials: Sequence[Trial], objectives: Sequence[str]):
        self.objectives = tuple(objectives)
        self.evaluated = list(trials)
        feasible = [t for t in self.evaluated if t.feasible]
        if feasible:
            import moocore

            keep = moocore.is_nondominated(np.array([t.values for t in feasible]), keep_weakly=True)  # ties stay
            feasible = [t for t, k in zip(feasible, keep) if k]
        self.trials = sorted(feasible, key=lambda t: t.values)

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials)

    def __len__(self) -> int:
        return len(self.trials)

    def __repr__(self) -> str:
        return f"Front({len(self)} archs of {len(self.evaluated)} evaluated; objectives {list(self.objectives)})"

    def values(self) -> np.ndarray:
        return np.array([t.values for t in self.trials], dtype=np.float64).reshape(len(self), len(self.objectives))

    def hypervolume(self, reference: Mapping[str, float], ideal: Mapping[str, float] | None = None) -> float:
        """Share of the box between ``ideal`` (default 0 for each objective) and ``reference`` that
        the front dominates, in [0, 1]; each objective is scaled to [0, 1] first, so objectives in
        different units weigh alike. Points outside the box count for nothing."""
        missing = [n for n in self.objectives if n not in reference]
        if missing:
            raise ValueError(f"hypervolume: the reference point needs a value for {missing}")
        if not self.trials:
            return 0.0
        import moocore

        ideal = ideal or {}
        low = np.array([ideal.get(n, 0.0) for n in self.objectives])
        high = np.array([reference[n] for n in self.objectives], dtype=np.float64)
        if np.any(high <= low):
            raise ValueError(f"hypervolume: reference {dict(reference)} must exceed the ideal point in every objective")
        return float(moocore.hypervolume((self.values() - low) / (high - low), ref=np.ones(len(low))))

    def best(self, minimize: str | None = None, **bounds: float) -> Trial:
        """The arch with the least ``minimize`` (default: the first objective) among those whose
        metrics stay within ``bounds``, e.g. ``front.best(latency_ms=2.0, params=50_000)``."""
        minimize = minimize or self.objectives[0]
        names = {minimize, *bounds}
        unknown = sorted(n for n in names if not self.trials or n not in self.trials[0].metrics)
        if unknown:
            known = sorted(self.trials[0].metrics) if self.trials else []
            raise ValueError(f"front.best: unknown metric(s) {unknown}; the front has {known}" if self.trials
                             else "front.best: the front is empty (no feasible arch was evaluated)")
        fits = [t for t in self.trials if all(t.metrics[n] <= b for n, b in bounds.items())]
        if not fits:
            least = {n: min(t.metrics[n] for t in self.trials) for n in bounds}
            raise ValueError(f"no arch on the front satisfies {bounds}; the least each reaches is {least}")
        return min(fits, key=lambda t: t.metrics[minimize])

    # -- export --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"objectives": list(self.objectives), "evaluated": len(self.evaluated),
                "failed": sum(t.failed for t in self.evaluated), "front": [t.to_json() for t in self.trials]}

    def save_json(self, path) -> None:
        from onefit.checkpoint import atomic_write

        atomic_write(Path(path), json.dumps(self.to_json(), indent=1).encode())

    def to_csv(self) -> str:
        """One row per arch on the front: every metric, then every dimension of the arch."""
        metrics = sorted({k for t in self.trials for k in t.metrics})
        dims = list(self.trials[0].arch) if self.trials else []
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*metrics, "seconds", *dims])
        for t in self.trials:
            writer.writerow([*(t.metrics.get(k) for k in metrics), round(t.seconds, 4), *(t.arch[d] for d in dims)])
        return out.getvalue()

    def save_csv(self, path) -> None:
        from onefit.checkpoint import atomic_write

        atomic_write(Path(path), self.to_csv().encode())
