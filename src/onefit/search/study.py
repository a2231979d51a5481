"""Study storage with optuna: every evaluation of a search, durable and shareable.

Each onefit trial is one optuna trial: the arch as its params (categorical over the dimension's
choices, so optuna's own tools can read it), the objectives as its values, and everything else
(metrics, violation, time taken, the failure's reason) as user attributes. A trial is written
once, when its evaluation has finished, in one transaction: a search killed at any moment loses at
most the evaluation in flight. A study remembers the problem it was made for (space, objectives,
constraints) and refuses to be continued with another.

Storage: a path (``runs/x/study.db``, made a SQLite URL), a path ending in ``.journal`` (optuna's
journal file, for workers on a shared file system without a database) or any URL optuna accepts
(``postgresql://...``, driven by psycopg when psycopg2 is not installed), so several ``onefit
search`` workers can share one study (``onefit.search.shared``).

>>> storage_url("mysql://user@host/db")
'mysql://user@host/db'
>>> hide_password("postgresql://user:secret@host/db")
'postgresql://user:***@host/db'
>>> storage_url("postgresql:/host/db")
Traceback (most recent call last):
...
onefit.search.study.StudyError: storage 'postgresql:/host/db' looks like a URL but is not one: ...
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from onefit.search.base import Trial
from onefit.search.claims import JOURNAL

PROBLEM_ATTR = "onefit:problem"


class StudyError(ValueError):
    """A study that cannot be opened, or that was made for another problem."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters or more: "C:" is a Windows drive


def storage_url(storage: str | Path) -> str:
    """A database URL (``scheme://...``) as it is, or a path made a SQLite URL; a ``scheme:``
    prefix without ``//`` is a typo of a URL, not a file name, and is refused."""
    text = str(storage)
    scheme = _SCHEME.match(text) if not isinstance(storage, Path) else None
    if scheme:
        if not text[scheme.end():].startswith("//"):
            raise StudyError(f"storage {text!r} looks like a URL but is not one: a database URL is "
                             "scheme://..., e.g. postgresql://user@host/db or sqlite:///runs/study.db; "
                             "or give a file path")
        return _with_driver(text, scheme.group(1))
    path = Path(text)
    if path.is_dir():
        path = path / "study.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".journal":  # optuna's journal file: workers on a shared file system, no database
        return f"{JOURNAL}{path.resolve()}"
    return f"sqlite:///{path.resolve()}"


def _with_driver(url: str, scheme: str) -> str:
    """A ``postgresql://`` URL names no driver, and SQLAlchemy then wants psycopg2: use psycopg (3),
    onefit's ``postgresql`` extra, when that is what is installed; say so when neither is."""
    import importlib.util

    if scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise StudyError(f"storage {hide_password(url)!r}: no PostgreSQL driver is installed; "
                         "pip install 'onefit[postgresql]' (psycopg)")
    return "postgresql+psycopg" + url[len(scheme):]


def hide_password(url: str) -> str:
    """``url`` with its password, if any, as ***."""
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)


class Study:
    """The trials of one search problem in an optuna storage."""

    def __init__(self, storage: str | Path, problem, name: str = "onefit"):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is noise here
        self.problem, self.url, self._seen = problem, storage_url(storage), -1
        self._study = self._open(name, len(problem.objectives))
        self._check_problem(name)
        self._distributions = {d.name: optuna.distributions.CategoricalDistribution(d.choices)
                               for d in problem.space}

    def _open(self, name: str, n_objectives: int, attempts: int = 8):
        """Create the study, or load it when it exists. Two processes creating one new storage at
        once race on its tables (one dies on a UNIQUE constraint of ``alembic_version``, or finds
        the database locked): the loser retries, and then finds what the winner made."""
        import optuna

        storage = self.url
        if storage.startswith(JOURNAL):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            storage = JournalStorage(JournalFileBackend(storage[len(JOURNAL):]))
        for attempt in range(attempts):
            try:
                return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                           directions=["minimize"] * n_objectives)
            except Exception as exc:  # optuna raises many types for bad URLs, drivers and files
                if attempt + 1 < attempts and _is_race(exc):
                    time.sleep(0.05 * 2 ** attempt)
                    continue
                raise StudyError(f"cannot open the study storage {hide_password(self.url)!r}: "
                                 f"{_reason(exc)}") from exc

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
        return [Trial.from_json(t.user_attrs["onefit"]) for t in self._finished()]

    def new_trials(self) -> list[Trial]:
        """The finished trials recorded since the last call (by any process sharing the study)."""
        fresh = [t for t in self._finished() if t.number > self._seen]
        if fresh:
            self._seen = max(t.number for t in fresh)
        return [Trial.from_json(t.user_attrs["onefit"]) for t in fresh]

    def _finished(self):
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
        return [t for t in self._study.get_trials(deepcopy=False, states=states) if "onefit" in t.user_attrs]

    def record(self, trial: Trial) -> None:
        import optuna

        state = optuna.trial.TrialState.FAIL if trial.failed else optuna.trial.TrialState.COMPLETE
        self._study.add_trial(optuna.trial.create_trial(
            state=state, values=None if trial.failed else list(trial.values), params=dict(trial.arch),
            distributions=self._distributions, user_attrs={"onefit": trial.to_json()}))


def _reason(exc: BaseException) -> str:
    """The database's own words for why it refused (the driver's message, without SQLAlchemy's
    boilerplate), and the password never."""
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split("\n")[0].split())
    return hide_password(f"{type(cause).__name__}: {text}")


def _is_race(exc: BaseException) -> bool:
    """Whether ``exc`` is what a concurrent creation of the same storage or study raises."""
    text = f"{type(exc).__name__}: {exc}"
    return any(sign in text for sign in ("IntegrityError", "UNIQUE constraint", "database is locked",
                                         "already exists", "DuplicatedStudyError"))


class MemoryStudy:
    """The same interface, kept in memory: for searches that need no record."""

    def __init__(self):
        self._trials: list[Trial] = []

    def trials(self) -> list[Trial]:
        return list(self._trials)

    def record(self, trial: Trial) -> None:
        self._trials.append(trial)
