"""optuna's own NSGA-II (``optuna.samplers.NSGAIISampler``, constrained) behind
onefit's ask/tell protocol: ``onefit search --searcher optuna_nsga2``.

The sampler runs on an optuna study of its own, in memory: each ``ask`` is an optuna trial
asked with the space's categorical distributions; each ``tell`` completes the trial it answers,
or, for an evaluation it did not ask for (another worker's, a resumed study's), adds it as a
finished trial of the current generation, so the sampler's populations hold every evaluation the
searcher was told. Each trial's constraint violation is its optuna constraint (feasible at 0). An
arch the sampler proposes again is told its known result at once and the sampler asked anew, so
``ask`` returns archs not yet evaluated, as every onefit searcher does.

onefit's own ``NSGA2Search`` stays the default ``nsga2``: its survival is elitist over the whole
history (so tells arriving out of order, from many workers, cost nothing) and it never proposes
an arch already asked, where optuna's generational sampler repeats archs in small categorical
spaces; ``bench/search_efficiency.py`` compares the two.

>>> from onefit.search.problem import toy_problem
>>> searcher = OptunaNSGA2Search(seed=0)
>>> searcher.setup(toy_problem())
>>> arch = searcher.ask()
>>> searcher.tell(searcher.problem.evaluate(arch))
>>> len(searcher._study.trials)
1
"""

from __future__ import annotations

from onefit.search.base import Searcher, Trial
from onefit.space import Arch

VIOLATION = "violation"  # the constraint's name in optuna (feasible at 0 or less)


class OptunaNSGA2Search(Searcher):
    """optuna's NSGAIISampler: generations of ``population`` archs."""

    def __init__(self, *, population: int = 20, crossover: float = 0.9, mutation: float | None = None,
                 seed: int = 0):
        if population < 2:
            raise ValueError(f"OptunaNSGA2Search.population must be >= 2, got {population}")
        super().__init__(seed=seed)
        self.population, self.crossover, self.mutation = population, crossover, mutation

    def setup(self, problem) -> None:
        import optuna

        super().setup(problem)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._distributions = {d.name: optuna.distributions.CategoricalDistribution(d.choices) for d in self.space}
        self._sampler = optuna.samplers.NSGAIISampler(
            population_size=self.population, crossover_prob=self.crossover, mutation_prob=self.mutation,
            seed=self.seed)
        self._study = optuna.create_study(directions=["minimize"] * len(problem.objectives), sampler=self._sampler)
        self._pending: dict[str, list] = {}  # key -> optuna trials asked and not told yet
        self._told: dict[str, Trial] = {}

    def ask(self) -> Arch:
        for _ in range(100):  # then the space is nearly exhausted: let the loop see a repeat
            trial = self._study.ask(self._distributions)
            arch = {d.name: trial.params[d.name] for d in self.space}
            known = self._told.get(self.key(arch))
            if known is None:
                break
            self._finish(trial, known)
        self._pending.setdefault(self.key(arch), []).append(trial)
        return arch

    def _finish(self, asked, trial: Trial) -> None:
        import optuna

        if not trial.failed:
            asked.set_constraint(VIOLATION, float(trial.violation))
        self._study.tell(asked, None if trial.failed else list(trial.values),
                         state=optuna.trial.TrialState.FAIL if trial.failed else optuna.trial.TrialState.COMPLETE)

    def tell(self, trial: Trial) -> None:
        import optuna

        key = self.key(trial.arch)
        self._told.setdefault(key, trial)
        waiting = self._pending.get(key)
        if waiting:
            self._finish(waiting.pop(0), trial)
            return
        failed = trial.failed
        attrs = {} if failed else {f"constraints:{VIOLATION}": float(trial.violation),
                                   self._sampler._get_generation_key(): self._generation()}
        self._study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
            values=None if failed else list(trial.values), params={d.name: trial.arch[d.name] for d in self.space},
            distributions=self._distributions, system_attrs=attrs))

    def _generation(self) -> int:
        """The generation a trial finished now joins: the newest, unless it is full (the rule of
        optuna's ``get_trial_generation``, which cannot write to a trial already finished)."""
        import optuna

        key = self._sampler._get_generation_key()
        done = self._study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        generations = [t.system_attrs.get(key, -1) for t in done]
        newest = max([0, *generations])
        return newest if generations.count(newest) < self.population else newest + 1
