"""Random search: uniform draws from the space, never the same arch twice while unseen ones remain.

>>> from onefit.search.problem import toy_problem
>>> searcher = RandomSearch(seed=0)
>>> searcher.setup(toy_problem())
>>> arch = searcher.ask()
>>> searcher.tell(toy_problem().evaluate(arch))
>>> arch in [searcher.ask() for _ in range(3)]  # never the same arch twice
False
"""

from __future__ import annotations

from onefit.search.base import Searcher, Trial
from onefit.space import Arch


class RandomSearch(Searcher):
    """Uniform sampling; the baseline every other searcher must beat."""

    def __init__(self, *, seed: int = 0):
        super().__init__(seed=seed)

    def setup(self, problem) -> None:
        super().setup(problem)
        self._seen: set[str] = set()

    def ask(self) -> Arch:
        for _ in range(100):  # a fresh arch while the space has them; then a repeat is fine
            arch = self.space.sample(self.rng)
            if self.key(arch) not in self._seen:
                break
        self._seen.add(self.key(arch))
        return arch

    def tell(self, trial: Trial) -> None:
        self._seen.add(self.key(trial.arch))
