"""The contract every searcher keeps: same seed, same proposals; never an arch outside the space;
failed and infeasible trials accepted; a replayed history is told without complaint."""

import math

import pytest

from onefit.search import SEARCHERS, Trial
from onefit.search.problem import Metric, Problem
from onefit.space import Dimension, Space


def wide_problem(constraints=None) -> Problem:
    """Eight dimensions (6,561 archs): big enough that no searcher sees it all."""
    space = Space([Dimension(f"w{i}", "width" if i < 6 else "depth", (1, 2, 3)) for i in range(8)])

    def error(arch):
        return 1.0 / sum(arch.values())

    def size(arch):
        return float(sum(v * (i + 1) for i, v in enumerate(arch.values())))

    return Problem(space, {"error": Metric(error), "size": Metric(size, cheap=True)}, ("error", "size"), constraints)


def run(searcher_type, problem, n, seed=0, fail_every=0):
    searcher = searcher_type(seed=seed)
    searcher.setup(problem)
    asked = []
    for i in range(n):
        arch = searcher.ask()
        asked.append(arch)
        trial = problem.evaluate(arch)
        if fail_every and i % fail_every == 0:
            trial = Trial(arch, None, error="simulated failure")
        searcher.tell(trial)
    return asked


@pytest.fixture(params=sorted(SEARCHERS))
def searcher_type(request):
    return SEARCHERS[request.param]


def test_same_seed_same_proposals(searcher_type):
    problem = wide_problem()
    first = run(searcher_type, problem, 40, seed=3)
    assert first == run(searcher_type, problem, 40, seed=3)
    assert first != run(searcher_type, problem, 40, seed=4)


def test_asks_stay_in_the_space_and_mostly_fresh(searcher_type):
    problem = wide_problem()
    asked = run(searcher_type, problem, 60)
    for arch in asked:
        assert problem.space.validate(arch) == arch
    assert len({problem.space.key(a) for a in asked}) >= 55  # repeats waste evaluations


def test_failed_and_infeasible_trials_are_accepted(searcher_type):
    problem = wide_problem(constraints={"size": 40.0})  # about half the space breaks it
    asked = run(searcher_type, problem, 40, fail_every=3)
    assert len(asked) == 40
    nan = Trial(asked[0], None, metrics={"error": math.nan}, error="objective value(s) [nan] are not finite")
    searcher = searcher_type(seed=0)
    searcher.setup(problem)
    searcher.tell(nan)
    assert problem.space.validate(searcher.ask())


def test_a_replayed_history_is_told_before_any_ask(searcher_type):
    problem = wide_problem()
    history = [problem.evaluate(a) for a in run(SEARCHERS["random"], problem, 30, seed=9)]
    searcher = searcher_type(seed=0)
    searcher.setup(problem)
    for trial in history:
        searcher.tell(trial)
    seen = {problem.space.key(t.arch) for t in history}
    fresh = [searcher.ask() for _ in range(10)]
    assert sum(problem.space.key(a) not in seen for a in fresh) >= 9
