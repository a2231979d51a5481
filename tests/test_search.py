"""search(): the loop, the study store (kill and resume), the front, and bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from onefit.report.plots import plot_front
from onefit.search import (Front, Metric, NSGA2Search, PredictorSearch, Problem, RandomSearch, SearchError,
                           StudyError, search)
from onefit.search.base import Trial
from onefit.search.predictor import PREDICTORS
from onefit.search.problem import toy_problem
from onefit.space import Dimension, Space


def test_nan_objective_is_a_failed_trial_and_the_search_goes_on():
    problem = toy_problem()
    nan_when_a_is_1 = Problem(problem.space, {"loss": lambda a: math.nan if a["a"] == 1 else problem.metrics["loss"].fn(a),
                                              "size": problem.metrics["size"]}, ("loss", "size"))
    front = search(nan_when_a_is_1, RandomSearch(seed=0), budget=20, progress=False)
    failed = [t for t in front.evaluated if t.failed]
    assert failed and all(t.arch["a"] == 1 and "not finite" in t.error for t in failed)
    assert len(front.evaluated) == 20 and all(t.arch["a"] != 1 for t in front)


def test_a_search_where_everything_fails_stops_with_the_reason():
    def broken(arch):
        raise RuntimeError("out of memory")

    problem = Problem(toy_problem().space, {"loss": broken}, ("loss",))
    with pytest.raises(SearchError, match="out of memory"):
        search(problem, RandomSearch(seed=0), budget=20, progress=False)


def test_a_constraint_nothing_satisfies_is_refused_up_front():
    with pytest.raises(ValueError, match=r"no sub-model satisfies the constraint size <= 0.1: the smallest arch"):
        toy_problem(constraints={"size": 0.1})


def test_an_expensive_constraint_nothing_meets_ends_in_a_warning_and_an_empty_front():
    problem = toy_problem()
    strict = Problem(problem.space, problem.metrics, problem.objectives, constraints={"loss": 1e-6})
    with pytest.warns(UserWarning, match=r"none of the 10 archs evaluated satisfies the constraints \{'loss': 1e-06\}"):
        front = search(strict, RandomSearch(seed=0), budget=10, progress=False)
    with pytest.raises(ValueError, match="the front is empty"):
        front.best()


def test_unknown_objective_names_what_exists():
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['latency_ms'\]; this problem has \['loss', 'size'\]"):
        Problem(toy_problem().space, toy_problem().metrics, ("loss", "latency_ms"))


def test_constraints_keep_the_front_feasible():
    front = search(toy_problem(constraints={"size": 6.0}), NSGA2Search(seed=1), budget=30, progress=False)
    assert front.trials and all(t.metrics["size"] <= 6.0 for t in front)
    assert any(t.violation > 0 for t in front.evaluated)


def test_the_front_is_exactly_the_non_dominated_feasible_set():
    problem = toy_problem()
    trials = [problem.evaluate(a) for a in (problem.space.sample(__import__("random").Random(i)) for i in range(40))]
    front = Front(trials, problem.objectives)
    dominated = lambda t, u: all(x <= y for x, y in zip(u.values, t.values)) and u.values != t.values  # noqa: E731
    assert all(not any(dominated(t, u) for u in trials) for t in front)
    assert all(any(dominated(t, u) for u in trials) or t.arch in [f.arch for f in front] for t in trials)


def test_hypervolume_of_known_fronts():
    space = Space([Dimension("x", "width", (1, 2))])
    trials = [Problem(space, {"a": lambda _: 0.5, "b": lambda _: 0.5}, ("a", "b")).evaluate({"x": 1})]
    front = Front(trials, ("a", "b"))
    assert front.hypervolume({"a": 1.0, "b": 1.0}) == pytest.approx(0.25)
    assert front.hypervolume({"a": 2.0, "b": 1.0}) == pytest.approx(0.75 * 0.5)
    with pytest.raises(ValueError, match="needs a value for"):
        front.hypervolume({"a": 1.0})


def test_best_under_bounds_and_its_errors():
    problem = toy_problem()
    front = search(problem, RandomSearch(seed=0), budget=36, progress=False)  # the whole space
    best = front.best(size=3.0)
    assert best.metrics["size"] <= 3.0
    assert all(t.metrics["loss"] >= best.metrics["loss"] for t in front if t.metrics["size"] <= 3.0)
    with pytest.raises(ValueError, match="no arch on the front satisfies"):
        front.best(size=0.01)
    with pytest.raises(ValueError, match="unknown metric"):
        front.best(latency_ms=2.0)


def test_front_json_csv_and_plots(tmp_path):
    front = search(toy_problem(), NSGA2Search(seed=0), budget=20, progress=False)
    front.save_json(tmp_path / "front.json")
    front.save_csv(tmp_path / "front.csv")
    data = json.loads((tmp_path / "front.json").read_text())
    assert data["evaluated"] == 20 and len(data["front"]) == len(front)
    rows = (tmp_path / "front.csv").read_text().splitlines()
    assert rows[0].startswith("loss,size,seconds,a,b,c") and len(rows) == len(front) + 1
    paths = plot_front(front, tmp_path / "plots")
    assert [p.name for p in paths] == ["front_loss_size.png"] and paths[0].stat().st_size > 1000


def test_a_study_continues_where_it_stopped_and_refuses_another_problem(tmp_path):
    db = tmp_path / "study.db"
    first = search(toy_problem(), RandomSearch(seed=0), budget=10, storage=db, progress=False)
    again = search(toy_problem(), RandomSearch(seed=1), budget=15, storage=db, progress=False)
    assert [t.arch for t in again.evaluated[:10]] == [t.arch for t in first.evaluated]
    assert len(again.evaluated) == 15
    with pytest.raises(StudyError, match="created for a different problem: its constraints differ"):
        search(toy_problem(constraints={"size": 20.0}), RandomSearch(), budget=5, storage=db, progress=False)
    other_space = Problem(Space([Dimension("a", "width", (1, 2))]), {"loss": lambda a: 1.0 / a["a"]}, ("loss",))
    with pytest.raises(StudyError, match="space, objectives differ"):
        search(other_space, RandomSearch(), budget=5, storage=db, progress=False)


def test_a_storage_that_cannot_be_opened():
    with pytest.raises(StudyError, match="cannot open the study storage 'nosuchdb://x'"):
        search(toy_problem(), RandomSearch(), budget=5, storage="nosuchdb://x", progress=False)
    with pytest.raises(StudyError, match="cannot open the study storage 'sqlite:////no/such/folder/s.db'"):
        search(toy_problem(), RandomSearch(), budget=5, storage="sqlite:////no/such/folder/s.db", progress=False)


SLOW_SEARCH = """
import sys, time
from onefit.search import search, Problem, PredictorSearch
from onefit.search.predictor import PREDICTORS
from onefit.search.problem import toy_problem
from onefit.space import Space, Dimension

log = open(sys.argv[2], "a")
space = Space([Dimension(f"d{i}", "width", (1, 2, 3, 4)) for i in range(5)])

def error(arch):
    log.write(str(sorted(arch.items())) + "\\n"); log.flush()
    time.sleep(0.05)
    return 1.0 / sum(arch.values())

problem = Problem(space, {"error": error, "size": (lambda a: float(sum(a.values())), True)[0]}, ("error", "size"))
search(problem, PredictorSearch(seed=0, initial=6, batch=4, predictor="ridge"), budget=40, storage=sys.argv[1],
       progress=False)
"""


def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path):
    script, db, log = tmp_path / "slow.py", tmp_path / "study.db", tmp_path / "evaluated.log"
    script.write_text(textwrap.dedent(SLOW_SEARCH))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(log)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 15):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = log.read_text().splitlines()
    assert 15 <= len(before) < 40, "the search should have been killed midway"

    problem_space = Space([Dimension(f"d{i}", "width", (1, 2, 3, 4)) for i in range(5)])
    from onefit.search.study import Study

    probe = Problem(problem_space, {"error": lambda a: 0.0, "size": Metric(lambda a: float(sum(a.values())), True)},
                    ("error", "size"))
    recorded = [str(sorted(t.arch.items())) for t in Study(db, probe).trials()]
    assert len(recorded) >= len(before) - 1  # at most the evaluation in flight is lost

    subprocess.run([sys.executable, str(script), str(db), str(log)], env=env, check=True, timeout=120)
    after = log.read_text().splitlines()[len(before):]
    final = Study(db, probe).trials()
    assert len(final) == 40
    assert not set(recorded) & set(after), "an evaluation recorded before the kill was done again"
    assert len({str(sorted(t.arch.items())) for t in final}) == 40


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_predictor_search_reaches_the_full_front_of_a_smooth_problem_faster_than_random(predictor):
    space = Space([Dimension(f"d{i}", "width", (1, 2, 3, 4)) for i in range(6)])
    weights = (1, 2, 3, 4, 5, 6)
    problem = Problem(space, {"error": lambda a: 1.0 / sum(w * v for w, v in zip(weights, a.values())),
                              "size": Metric(lambda a: float(sum(a.values())), cheap=True)}, ("error", "size"))
    reference = {"error": 1 / 21 * 1.1, "size": 26.0}
    searchers = {"random": lambda seed: RandomSearch(seed=seed),
                 predictor: lambda seed: PredictorSearch(seed=seed, predictor=predictor)}
    hv = {name: [search(problem, make(k), budget=60, progress=False).hypervolume(reference) for k in range(2)]
          for name, make in searchers.items()}
    assert min(hv[predictor]) > max(hv["random"])


def test_a_searcher_stuck_on_measured_archs_stops_with_a_warning():
    class Stuck(RandomSearch):
        def ask(self):
            return self.space.max()

    with pytest.warns(UserWarning, match="Stuck kept proposing archs already evaluated; stopped after 1 of 5"):
        front = search(toy_problem(), Stuck(seed=0), budget=5, progress=False)
    assert len(front.evaluated) == 1


def test_the_front_table_shows_only_what_was_measured():
    from onefit.report.tables import front_table

    front = search(toy_problem(), RandomSearch(seed=0), budget=8, progress=False)
    table = front_table(front, "toy")
    assert [c.header for c in table.columns] == ["#", "loss", "size"]  # no empty params / macs columns
    assert table.row_count == len(front)


def test_a_storage_url_with_a_scheme_typo_is_refused_not_made_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for typo in ("postgresql:/host/db", "postgres:host/db", "sqlite:study.db"):
        with pytest.raises(StudyError, match="looks like a URL but is not one"):
            search(toy_problem(), RandomSearch(), budget=2, storage=typo, progress=False)
    with pytest.raises(StudyError, match="cannot open the study storage 'postgersql://host/db'"):
        search(toy_problem(), RandomSearch(), budget=2, storage="postgersql://host/db", progress=False)
    assert not list(tmp_path.iterdir()), "a typo of a URL left files behind"
    from onefit.search.study import storage_url

    assert storage_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert storage_url(tmp_path / "a:b.db").endswith("a:b.db")  # a Path is a path, colon or not


RACE = """
import sys, time
from onefit.search.problem import toy_problem
from onefit.search.study import Study

for db, start in zip(sys.argv[1::2], sys.argv[2::2]):  # one race per database, all processes at once
    time.sleep(max(0.0, float(start) - time.time()))
    Study(db, toy_problem())
"""


def test_processes_creating_one_new_study_at_once_all_open_it(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(textwrap.dedent(RACE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = time.time() + 6.0  # every process has imported optuna by then
    races = [arg for round_ in range(3) for arg in (str(tmp_path / f"study{round_}.db"), str(first + 1.5 * round_))]
    procs = [subprocess.Popen([sys.executable, str(script), *races], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e for e in errors if e)[-2000:]


def _timed_problem(error: float, constraints=None, estimate=True):
    """``loss`` falls with ``a``, ``ms`` rises with it; ``ms`` is a costly measurement with an
    estimate off by up to ``error`` (each arch its own deterministic factor), given with a margin
    of 1.5 times that; calls of the measurement are counted."""
    space = Space([Dimension("a", "width", tuple(range(1, 13))), Dimension("b", "depth", (1, 2, 3))])
    calls = []

    def ms(arch):
        calls.append(dict(arch))
        return float(arch["a"] * arch["b"])

    def guess(arch):
        factor = 1 + error * math.sin(7 * arch["a"] + 3 * arch["b"])  # within +-error, never exact
        return arch["a"] * arch["b"] * factor, 1.5 * error
    metrics = {"loss": Metric(lambda a: 1.0 / a["a"] + 0.3 * (a["b"] == 3), cheap=True),
               "ms": Metric(ms, estimate=guess if estimate else None)}
    return Problem(space, metrics, ("loss", "ms"), constraints), calls


def test_a_costly_metric_is_measured_only_where_it_can_change_the_front():
    """Predictions within their margin: every arch on the front of all 36 is measured, the front is
    the one measuring everything gives, and the archs that even the prediction's optimistic end
    leaves dominated, or over the bound, are not measured."""
    archs = [{"a": a, "b": b} for b in (1, 2, 3) for a in range(12, 0, -1)]
    plain, _ = _timed_problem(0.2, estimate=False)
    everything = Front([plain.evaluate(a) for a in archs], plain.objectives)
    problem, calls = _timed_problem(0.2)
    trials = [problem.evaluate(a) for a in archs]
    front = Front(trials, problem.objectives)
    assert [t.arch for t in front] == [t.arch for t in everything] and all(not t.predicted for t in front)
    predicted = [t for t in trials if t.predicted]
    # b = 2 and 3: at least 1.4 and 2.1 x the time of b = 1 for no better loss
    assert len(predicted) == 24 and calls == archs[:12] and all(t.predicted == ("ms",) for t in predicted)
    assert all(t.metrics["ms"] != t.arch["a"] * t.arch["b"] for t in predicted)  # the prediction is kept
    assert Trial.from_json(json.loads(json.dumps(predicted[0].to_json()))).predicted == ("ms",)

    bounded, calls = _timed_problem(0.1, constraints={"ms": 6.0})
    over = bounded.evaluate({"a": 12, "b": 1})  # predicted at least 10.8 ms: over the bound whatever it is
    near = bounded.evaluate({"a": 6, "b": 1})  # could be under: measured
    assert over.predicted == ("ms",) and over.violation > 0 and near.predicted == () and calls == [{"a": 6, "b": 1}]


def test_without_a_prediction_every_arch_is_measured_and_a_resumed_search_judges_by_the_loaded_trials(tmp_path):
    problem, calls = _timed_problem(0.2)
    problem.metrics["ms"] = Metric(problem.metrics["ms"].fn, estimate=lambda arch: None)  # no model fitted yet
    assert [problem.evaluate({"a": a, "b": 3}).predicted for a in (12, 1)] == [(), ()] and len(calls) == 2

    db = tmp_path / "study.db"
    first, _ = _timed_problem(0.2)
    shallow = next(t for t in search(first, RandomSearch(seed=0), budget=20, storage=db, progress=False)
                   if t.arch["b"] == 1)
    again, calls = _timed_problem(0.2)  # a new process: what it knows comes from the study
    search(again, RandomSearch(seed=1), budget=20, storage=db, progress=False)  # nothing left to evaluate
    assert calls == [] and again.evaluate({**shallow.arch, "b": 3}).predicted == ("ms",) and calls == []
