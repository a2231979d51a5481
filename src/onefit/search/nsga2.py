"""NSGA-II (Deb, Pratap, Agarwal, Meyarivan 2002) over the choice indices of a space.

Selection ranks trials by constrained domination (feasible before infeasible, infeasible by
violation; Deb 2000), then non-dominated front, then crowding distance (larger first). Survival is
elitist over every trial told so far: the parents of a generation are the best ``population`` of
the whole history, NSGA-II's (mu + lambda) survival kept across generations and robust to asks and
tells arriving out of order. Offspring: binary tournaments, uniform crossover, and a mutation that
moves a dimension one choice up or down (nearby choices behave alike) or, rarely, anywhere.
The functions here are shared with the predictor-assisted searcher.

>>> crowding(np.array([[0.0, 1.0], [0.4, 0.6], [0.5, 0.5], [1.0, 0.0]])).round(2).tolist()  # the ends: infinite
[inf, 1.0, 1.2, inf]
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from onefit.search.base import Searcher, Trial
from onefit.space import Arch, Space


def crowding(values: np.ndarray) -> np.ndarray:
    """Crowding distance of each row within its front (boundary points: infinite)."""
    n, m = values.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(values[:, k], kind="stable")
        spread = values[order[-1], k] - values[order[0], k]
        distance[order[[0, -1]]] = np.inf
        if spread > 0:
            distance[order[1:-1]] += (values[order[2:], k] - values[order[:-2], k]) / spread
    return distance


def survival_order(values: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Indices from best to worst: feasible by (front, -crowding), then infeasible by violation."""
    import moocore

    feasible = np.flatnonzero(violation <= 0)
    infeasible = np.flatnonzero(violation > 0)
    ranks = moocore.pareto_rank(values[feasible]) if len(feasible) else np.zeros(0, int)
    crowd = np.zeros(len(feasible))
    for r in np.unique(ranks):
        members = ranks == r
        crowd[members] = crowding(values[feasible][members])
    best = feasible[np.lexsort((-crowd, ranks))]
    return np.concatenate([best, infeasible[np.argsort(violation[infeasible], kind="stable")]]).astype(int)


def to_index(space: Space, arch: Arch) -> list[int]:
    return [d.choices.index(arch[d.name]) for d in space]


def to_arch(space: Space, index: Sequence[int]) -> Arch:
    return {d.name: d.choices[i] for d, i in zip(space, index)}


def make_offspring(space: Space, parents: list[list[int]], rng: random.Random, n: int,
                   crossover: float = 0.9, mutation: float | None = None) -> list[list[int]]:
    """``n`` children of ``parents`` (best first): tournaments on position, uniform crossover,
    step mutation with probability ``mutation`` per dimension (default 1 / dimensions)."""
    sizes = [len(d.choices) for d in space]
    rate = mutation if mutation is not None else 1.0 / len(sizes)

    def pick() -> list[int]:  # binary tournament: a lower position in `parents` is better
        return parents[min(rng.randrange(len(parents)), rng.randrange(len(parents)))]

    children = []
    for _ in range(n):
        a, b = pick(), pick()
        child = [x if rng.random() < 0.5 else y for x, y in zip(a, b)] if rng.random() < crossover else list(a)
        for k, size in enumerate(sizes):
            if size > 1 and rng.random() < rate:
                step = rng.choice((-1, 1)) if rng.random() < 0.8 else rng.randrange(size) - child[k]
                child[k] = min(max(child[k] + step, 0), size - 1)
        children.append(child)
    return children


class NSGA2Search(Searcher):
    """NSGA-II: a first generation of ``population`` archs (the smallest, the largest, the rest
    random), then generations of offspring of the best ``population`` trials so far."""

    def __init__(self, *, population: int = 20, crossover: float = 0.9, mutation: float | None = None,
                 seed: int = 0):
        if population < 4:
            raise ValueError(f"NSGA2Search.population must be >= 4, got {population}")
        if not 0.0 <= crossover <= 1.0 or (mutation is not None and not 0.0 < mutation <= 1.0):
            raise ValueError(f"NSGA2Search: crossover in [0, 1] and mutation in (0, 1], got {crossover}, {mutation}")
        super().__init__(seed=seed)
        self.population, self.crossover, self.mutation = population, crossover, mutation

    def setup(self, problem) -> None:
        super().setup(problem)
        self._queue: list[Arch] = [self.space.min(), self.space.max()]
        self._queue += [self.space.sample(self.rng) for _ in range(self.population - 2)]
        self._told: dict[str, Trial] = {}
        self._asked: set[str] = set()

    def ask(self) -> Arch:
        for _ in range(1000):  # then every sub-model has been asked (a space with twins): repeat one
            if not self._queue:
                self._queue = self._next_generation()
            arch = self._queue.pop(0)
            key = self.key(arch)
            if key not in self._asked and key not in self._told or self._exhausted():
                break
        self._asked.add(key)
        return arch

    def tell(self, trial: Trial) -> None:
        self._told[self.key(trial.arch)] = trial

    def _exhausted(self) -> bool:
        return len(self._asked | set(self._told)) >= self.space.size

    def parents(self) -> list[Trial]:
        """The best ``population`` trials told so far, best first (failed ones never)."""
        done = [t for t in self._told.values() if not t.failed]
        if not done:
            return []
        values = np.array([t.values for t in done], dtype=np.float64)
        order = survival_order(values, np.array([t.violation for t in done]))
        return [done[i] for i in order[: self.population]]

    def _next_generation(self) -> list[Arch]:
        parents = [to_index(self.space, t.arch) for t in self.parents()]
        if len(parents) < 2:  # nothing usable told yet (all pending or failed): explore
            return [self.space.sample(self.rng) for _ in range(self.population)]
        children = make_offspring(self.space, parents, self.rng, 4 * self.population, self.crossover, self.mutation)
        fresh, seen = [], self._asked | set(self._told)
        for child in map(lambda c: to_arch(self.space, c), children):
            if (key := self.key(child)) not in seen:
                seen.add(key)
                fresh.append(child)
        return fresh[: self.population] or [self.space.sample(self.rng)]
