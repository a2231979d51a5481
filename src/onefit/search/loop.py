"""``onefit.search``: the visible ask / evaluate / record / tell loop."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

from onefit.progress import progress_bar
from onefit.search.base import Searcher
from onefit.search.pareto import Front
from onefit.search.problem import Problem
from onefit.search.study import MemoryStudy, Study


class SearchError(RuntimeError):
    """A search that cannot go on (every evaluation fails)."""


def search(problem: Problem, searcher: Searcher, *, budget: int, storage: str | Path | None = None,
           study_name: str = "onefit", progress: bool = True, share: bool = False,
           claim_timeout_s: float = 120.0) -> Front:
    """Evaluate up to ``budget`` distinct sub-models proposed by ``searcher``; return the Pareto front.

    With ``storage`` (a path or database URL) every evaluation is recorded as it finishes, and a
    search started again on the same study goes on from there: recorded trials are told to the
    searcher, not evaluated again, and count towards ``budget``. ``searcher`` is copied, so the
    object passed in stays a reusable config.

    >>> from onefit.search.problem import toy_problem
    >>> from onefit.search.nsga2 import NSGA2Search
    >>> front = search(toy_problem(), NSGA2Search(seed=0), budget=30, progress=False)
    >>> len(front.evaluated), front.best(size=8).arch
    (30, {'a': 4, 'b': 2, 'c': 8})

    ``share``: this process is one of several workers on the study in ``storage`` (a database
    every worker reaches, e.g. PostgreSQL): ``budget`` is the study's, each arch is claimed before
    it is evaluated so none is evaluated twice, a claim not renewed for ``claim_timeout_s`` (its
    worker died) is taken over, and the front returned is the whole study's
    (``onefit.search.shared``).
    """
    if budget < 1:
        raise ValueError(f"search: budget must be a positive number of evaluations, got {budget}")
    if share:
        if storage is None:
            raise ValueError("search: share=True needs a storage every worker reaches, e.g. postgresql://...")
        from onefit.search.shared import shared_search

        front, trials = shared_search(problem, searcher, budget=budget, storage=storage, study_name=study_name,
                                      progress=progress, claim_timeout_s=claim_timeout_s)
        _warn_if_infeasible(front, trials, problem)
        return front
    study = MemoryStudy() if storage is None else Study(storage, problem, study_name)
    searcher = copy.deepcopy(searcher)
    searcher.setup(problem)
    trials = study.trials()
    done = {problem.key(t.arch): t for t in trials}
    for trial in trials:  # a resumed study: the searcher learns what was already measured
        searcher.tell(trial)
        problem.observe(trial)
    repeats = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"search {type(searcher).__name__}", total=budget, completed=len(done))
        while len(done) < min(budget, problem.space.size) and repeats < 10 * budget:
            arch = problem.space.validate(searcher.ask())
            key = problem.key(arch)
            if key in done:  # measured already (maybe as another arch of the same sub-model): spend nothing
                searcher.tell(dataclasses.replace(done[key], arch=arch))
                repeats += 1
                continue
            trial = problem.evaluate(arch)
            study.record(trial)
            searcher.tell(trial)
            done[key] = trial
            trials.append(trial)
            bar.update(task, advance=1)
            _stop_if_all_failed(trials)
    if repeats >= 10 * budget:
        warnings.warn(f"{type(searcher).__name__} kept proposing archs already evaluated; stopped after "
                      f"{len(done)} of {budget} evaluations", stacklevel=2)
    front = Front(trials, problem.objectives)
    _warn_if_infeasible(front, trials, problem)
    return front


def _warn_if_infeasible(front, trials, problem) -> None:
    if not front.trials and any(not t.failed for t in trials):
        closest = min((t for t in trials if not t.failed), key=lambda t: t.violation)
        warnings.warn(f"none of the {len(trials)} archs evaluated satisfies the constraints {problem.constraints}; "
                      f"the closest has {({n: closest.metrics[n] for n in problem.constraints})}", stacklevel=3)


def _stop_if_all_failed(trials, first: int = 5) -> None:
    if len(trials) == first and all(t.failed for t in trials):
        raise SearchError(f"the first {first} evaluations all failed; the first said: {trials[0].error}")
