"""Predictor-assisted search, as in LINAS (Cummings et al. 2022) and SimQ-NAS (Sarah et al. 2023).

Evaluating an arch for real (extract, re-estimate batch norm, run the validation set) is the
expensive part of a search; predicting it from the arch is nearly free. So, after a first batch of
real evaluations, each round:

1. fits one cheap regressor per expensive objective on every arch evaluated so far (cheap
   objectives, such as params or MACs, are computed exactly instead);
2. runs NSGA-II for ``generations`` against the predictions only;
3. sends the ``batch`` most promising unseen archs of that predicted front (spread along it by
   crowding distance) to be evaluated for real; their results refit the predictors.

Features: each dimension's choice index scaled to [0, 1], plus the log of every cheap metric
(capacity explains most of a sub-model's error, and the counts measure it exactly). The default
regressor is a random forest: fitted on 50 or more evaluated sub-models of the digits and MNIST
families, it ranks the others best of the three offered (``bench/results/predictor_quality.md``).
"""

from __future__ import annotations

import math

import numpy as np

from onefit.search.base import Trial
from onefit.search.nsga2 import NSGA2Search, make_offspring, survival_order, to_arch, to_index
from onefit.space import Arch

PREDICTORS = ("ridge", "forest", "mlp")


def make_predictor(kind: str, seed: int):
    """A fresh scikit-learn regressor; standardised inputs for the linear and neural ones, and a
    standardised target for the neural one (errors span a few hundredths: unscaled, its weight
    decay flattens the fit to a constant)."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 2, 12)))
    if kind == "forest":
        return RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed)
    mlp = MLPRegressor(hidden_layer_sizes=(32, 32), max_iter=2000, random_state=seed)
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp), transformer=StandardScaler())


class PredictorSearch(NSGA2Search):
    """LINAS-style search: NSGA-II on predicted objectives screens candidates for real evaluation."""

    def __init__(self, *, initial: int = 20, batch: int = 10, predictor: str = "forest", generations: int = 20,
                 population: int = 40, seed: int = 0):
        if predictor not in PREDICTORS:
            raise ValueError(f"PredictorSearch.predictor must be one of {PREDICTORS}, got {predictor!r}")
        if initial < 4 or batch < 1 or generations < 1:
            raise ValueError(f"PredictorSearch: initial >= 4, batch >= 1, generations >= 1; got "
                             f"{initial}, {batch}, {generations}")
        super().__init__(population=population, seed=seed)
        self.initial, self.batch, self.predictor, self.generations = initial, batch, predictor, generations

    def setup(self, problem) -> None:
        super().setup(problem)
        self._queue = self._queue[:2] + [self.space.sample(self.rng) for _ in range(self.initial - 2)]
        self._cheap_cache: dict[str, dict[str, float]] = {}

    def _next_generation(self) -> list[Arch]:
        done = [t for t in self._told.values() if not t.failed]
        if len(done) < 4:
            return [self.space.sample(self.rng) for _ in range(self.batch)]
        predict = self._fit(done)
        pool = [to_index(self.space, t.arch) for t in self.parents()]
        for _ in range(self.generations):  # NSGA-II against the predictors only
            pool += make_offspring(self.space, pool[: self.population], self.rng, self.population)
            pool = [pool[i] for i in self._order(pool, predict)]
        seen = self._asked | set(self._told)
        fresh = [a for a in (to_arch(self.space, p) for p in pool) if self.key(a) not in seen]
        unique = list({self.key(a): a for a in fresh}.values())
        return unique[: self.batch] or [self.space.sample(self.rng)]

    def _order(self, pool: list[list[int]], predict) -> list[int]:
        """Pool indices by predicted survival, duplicates of an index vector dropped."""
        first = {tuple(p): i for i, p in reversed(list(enumerate(pool)))}
        keep = sorted(first.values())
        archs = [to_arch(self.space, pool[i]) for i in keep]
        values, violation = predict(archs)
        return [keep[i] for i in survival_order(values, violation)]

    # -- predictors ----------------------------------------------------------------------------
    def _cheap(self, arch: Arch) -> dict[str, float]:
        key = self.space.key(arch)
        if key not in self._cheap_cache:
            names = [n for n, m in self.problem.metrics.items() if m.cheap]
            self._cheap_cache[key] = self.problem.compute(arch, names)
        return self._cheap_cache[key]

    def features(self, archs: list[Arch]) -> np.ndarray:
        sizes = [max(len(d.choices) - 1, 1) for d in self.space]
        rows = []
        for arch in archs:
            ordinal = [i / s for i, s in zip(to_index(self.space, arch), sizes)]
            rows.append(ordinal + [math.log1p(max(v, 0.0)) for v in self._cheap(arch).values()])
        return np.array(rows, dtype=np.float64)

    def _fit(self, done: list[Trial]):
        """A function from archs to (predicted objective values, violation of cheap constraints)."""
        objectives, cheap = self.problem.objectives, set(self.problem.cheap)
        x = self.features([t.arch for t in done])
        models = {}
        for k, name in enumerate(objectives):
            if name not in cheap:
                models[name] = make_predictor(self.predictor, self.seed).fit(x, [t.values[k] for t in done])

        def predict(archs: list[Arch]) -> tuple[np.ndarray, np.ndarray]:
            features = self.features(archs)
            columns = [models[n].predict(features) if n in models else
                       np.array([self._cheap(a)[n] for a in archs]) for n in objectives]
            violation = np.array([self.problem.violation(self._cheap(a)) for a in archs])
            return np.stack(columns, axis=1), violation

        return predict
