"""Many search workers on one study: ``search(..., share=True)``, ``onefit search RUN --storage
postgresql://... --workers-share`` started on one machine or many.

Each worker:

- registers in the study and reseeds its searcher with its number (worker 1 keeps the seed), so
  workers do not all propose the same archs (optuna issue 3162 for NSGA-II samplers);
- before each proposal, reads the trials the others recorded and tells them to its searcher, so
  a population, a fitted predictor or a tree is rebuilt from the whole study;
- claims a proposal's canonical key before evaluating it (``onefit.search.claims``): no arch is
  evaluated twice across workers, and the workers together evaluate the study's ``budget``;
- takes over, once, a claim whose worker stopped beating (killed mid-evaluation);
- stops when every slot of the budget is claimed and recorded, and returns the study's whole front.

One worker alone on a SQLite file (the same code; several workers want a database server):

>>> import os, tempfile
>>> from onefit.search.nsga2 import NSGA2Search
>>> from onefit.search.problem import toy_problem
>>> storage = os.path.join(tempfile.mkdtemp(), "study.db")
>>> front, trials = shared_search(toy_problem(), NSGA2Search(seed=0), budget=10, storage=storage,
...                               study_name="demo", progress=False)
>>> len(trials), len({tuple(sorted(t.arch.items())) for t in trials})
(10, 10)
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from pathlib import Path

from onefit.progress import progress_bar
from onefit.search.base import Searcher
from onefit.search.claims import claims_for
from onefit.search.loop import _stop_if_all_failed
from onefit.search.pareto import Front
from onefit.search.problem import Problem
from onefit.search.study import Study

RESEED = 1_000_003  # worker n's searcher seed: seed + RESEED * (n - 1)


def shared_search(problem: Problem, searcher: Searcher, *, budget: int, storage: str | Path, study_name: str,
                  progress: bool, claim_timeout_s: float = 120.0, poll_s: float = 0.2) -> tuple[Front, list]:
    """One worker of a shared search; returns the study's front and every trial in the study."""
    study = Study(storage, problem, study_name)  # refuses a study made for another problem, writing nothing
    claims = claims_for(study.url, study_name, timeout_s=claim_timeout_s)
    number = claims.register()
    searcher = copy.deepcopy(searcher)
    searcher.seed += RESEED * (number - 1)
    searcher.setup(problem)
    cap = min(budget, problem.space.size)
    done: dict[str, object] = {}
    mine: list = []

    def learn() -> None:  # what every worker recorded since the last look
        for trial in study.new_trials():
            key = problem.key(trial.arch)
            if key not in done:
                done[key] = trial
                searcher.tell(trial)

    def evaluate(arch, key) -> None:
        with claims.heartbeat(key):
            trial = problem.evaluate(arch)
        study.record(trial)
        claims.finish(key)
        done[key] = trial
        searcher.tell(trial)
        mine.append(trial)
        _stop_if_all_failed(mine)

    learn()
    for key, trial in list(done.items()):  # recorded before the workers shared the study
        claims.adopt(key, dict(trial.arch))
    repeats = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"search {type(searcher).__name__} (worker {number})", total=cap, completed=len(done))
        while True:
            learn()
            bar.update(task, completed=min(len(done), cap))
            arch = claims.take_over()
            if arch is not None:  # its worker died mid-evaluation
                arch = problem.space.validate(arch)
                key = problem.key(arch)
                if key in done:  # it was recorded before the worker died
                    claims.finish(key)
                else:
                    evaluate(arch, key)
                continue
            if claims.claimed() >= cap or repeats >= 10 * budget:
                if claims.pending() == 0:
                    break
                time.sleep(poll_s)  # the last claims are being evaluated, or will be taken over
                continue
            arch = problem.space.validate(searcher.ask())
            key = problem.key(arch)
            if key in done:
                searcher.tell(dataclasses.replace(done[key], arch=arch))
                repeats += 1
                continue
            got = claims.claim(key, dict(arch), budget=cap)
            if got:
                evaluate(arch, key)
            elif got is False:  # another worker has it; its result arrives through learn()
                repeats += 1
    if repeats >= 10 * budget:
        warnings.warn(f"worker {number}: {type(searcher).__name__} kept proposing archs already taken; it stopped "
                      f"proposing and waited for the others", stacklevel=3)
    learn()
    trials = study.trials()
    return Front(trials, problem.objectives), trials

