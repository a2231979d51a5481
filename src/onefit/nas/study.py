"""Study storage with optuna: every evaluation of a search, durable and shareable.

Each onefit trial is one optuna trial: the arch as its params (categorical over the dimension's
choices, so optuna's own tools can read it), the objectives as its values, and everything else
(metrics, violation, time taken, the failure's reason) as user attributes. A trial is written
once, when its evaluation has finished, in one transaction: a search killed at any moment loses at
most the evaluation in flight. A study remembers the problem it was made for (space, objectives,
constraints) and refuses to be continued with another.

Storage: a path (``runs/x/study.db``, made a SQLite URL) or any URL optuna accepts
(``postgresql://...``), so several ``onefit search`` workers can share one study.
"""

from __future__ import annotations

import json
from pathlib import Path

from onefit.nas.base import Trial

PROBLEM_ATTR = "onefit:problem"


class StudyError(ValueError):
    """A study that cannot be opened, or that was made for another problem."""


def storage_url(storage: str | Path) -> str:
    text = str(storage)
    if "://" in text:
        return text
    path = Path(text)
    if path.is_dir():
        path = path / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


class Study:
    """The trials of one search problem in an optuna storage."""

    def __init__(self, storage: str | Path, problem, name: str = "onefit"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is noise here
        self.problem, self.url = problem, storage_url(storage)
        try:
            self._study = optuna.create_study(storage=self.url, study_name=name, load_if_exists=True,
                                              directions=["minimize"] * len(problem.objectives))
        except Exception as exc:  # optuna raises many types for bad URLs, drivers and files
            raise StudyError(f"cannot open the study storage {self.url!r}: {type(exc).__name__}: {exc}") from exc
        self._check_problem(name)
        self._distributions = {d.name: optuna.distributions.CategoricalDistribution(d.choices)
                               for d in problem.space}

    def _check_problem(self, name: str) -> None:
        wanted = json.loads(json.dumps(self.problem.describe()))  # tuples -> lists, as stored
        stored = self._study.user_attrs.get(PROBLEM_ATTR)
        if stored is None:
            self._study.set_user_attr(PROBLEM_ATTR, wanted)
            return
        differ = [k for k in wanted if stored.get(k) != wanted[k]]
        if differ:
            raise StudyError(f"study {name!r} in {self.url} was created for a different problem: its "
                             f"{', '.join(differ)} differ. Use another study name or storage.")

    def trials(self) -> list[Trial]:
        """Every finished trial (complete or failed), in the order they were recorded."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return [Trial.from_json(t.user_attrs["onefit"]) for t in self._study.get_trials(deepcopy=False, states=states)
                if "onefit" in t.user_attrs]

    def record(self, trial: Trial) -> None:
        import optuna

        state = optuna.trial.TrialState.FAIL if trial.failed else optuna.trial.TrialState.COMPLETE
        self._study.add_trial(optuna.trial.create_trial(
            state=state, values=None if trial.failed else list(trial.values), params=dict(trial.arch),
            distributions=self._distributions, user_attrs={"onefit": trial.to_json()}))


class MemoryStudy:
    """The same interface, kept in memory: for searches that need no record."""

    def __init__(self):
        self._trials: list[Trial] = []

    def trials(self) -> list[Trial]:
        return list(self._trials)

    def record(self, trial: Trial) -> None:
        self._trials.append(trial)
