"""N2NSearch: the teacher first, reproducible and valid proposals, a policy that learns (and whose
trade-off weight moves it along the front), and tells that never raise."""

import math
import random
import statistics

import pytest
import torch

from onefit.search.base import Trial
from onefit.search.n2n import N2NSearch
from onefit.search.problem import Metric, Problem, toy_problem
from onefit.space import Dimension, Space


@pytest.fixture(autouse=True)
def one_thread():
    """The policy is tiny: extra intra-op threads only spin (and slow a loaded 2-core box ten-fold)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(constraints=None) -> Problem:
    """12,288 archs: two depth dims, four widths, bits; loss falls with capacity, size rises with it."""
    space = Space([Dimension(f"depth:s{i}", "depth", (1, 2, 3, 4)) for i in range(2)]
                  + [Dimension(f"width:w{i}", "width", (8, 16, 24, 32)) for i in range(4)]
                  + [Dimension("bits", "bits", (4, 8, 16))])

    def width(a):
        return sum(a[f"width:w{i}"] for i in range(4))

    def loss(a):
        capacity = width(a) / 128 * (a["depth:s0"] + a["depth:s1"]) / 8
        return 0.05 + 0.5 * (1 - capacity) ** 2 + (0.2 if a["bits"] == 4 else 0.0)

    def size(a):
        return width(a) * (a["depth:s0"] + a["depth:s1"]) * a["bits"]

    return Problem(space, {"loss": Metric(loss), "size": Metric(size, cheap=True)}, ("loss", "size"), constraints)


def proposals(problem, n, seed=0, **settings):
    searcher = N2NSearch(seed=seed, **settings)
    searcher.setup(problem)
    archs = []
    for _ in range(n):
        archs.append(searcher.ask())
        searcher.tell(problem.evaluate(archs[-1]))
    return archs, searcher


def test_first_ask_is_the_teacher_and_proposals_are_valid_and_distinct():
    problem = synthetic()
    archs, _ = proposals(problem, 60)
    assert archs[0] == problem.space.max()
    assert all(problem.space.validate(a) == a for a in archs)
    assert len({problem.space.key(a) for a in archs}) == 60


def test_same_seed_same_proposals_and_global_rng_untouched():
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    first, _ = proposals(synthetic(), 30, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert proposals(synthetic(), 30, seed=3)[0] == first
    assert proposals(synthetic(), 30, seed=4)[0] != first


def test_policy_learns_and_weight_moves_it_along_the_front():
    # checked for seeds 0..4: last-minus-first gain 0.13..0.18, size(w=0.25) / size(w=4) 1.09..1.8
    problem = synthetic()
    searcher = N2NSearch(seed=0)
    searcher.setup(problem)
    rewards = []
    score = searcher._reward
    searcher._reward = lambda trial, w: rewards.append(score(trial, w)) or rewards[-1]
    for _ in range(300):
        searcher.tell(problem.evaluate(searcher.ask()))
    assert statistics.mean(rewards[-30:]) > statistics.mean(rewards[:30]) + 0.05
    sizes = {}
    for w in (0.25, 4.0):  # a small w values quality, a large one compression
        with torch.no_grad():
            drawn, _ = searcher._policy(torch.full((200,), math.log(w)),  # drawn [200, D]
                                        generator=torch.Generator().manual_seed(1))
        sizes[w] = statistics.mean(problem.evaluate(searcher._arch(a)).values[1] for a in drawn)
    assert sizes[0.25] > sizes[4.0]


def test_tell_accepts_failed_infeasible_unasked_and_out_of_order_trials():
    problem = synthetic(constraints={"size": 2000})
    searcher = N2NSearch(seed=0, batch=2)
    searcher.setup(problem)
    asked = [searcher.ask() for _ in range(8)]
    assert asked[0] == problem.space.max()
    teacher = problem.evaluate(asked[0])
    assert teacher.violation > 0  # the teacher breaks the constraint but still sets the reference
    searcher.tell(Trial(asked[1], None, error="x"))
    searcher.tell(Trial(asked[2], (math.nan, 1.0)))
    searcher.tell(Trial(asked[3], (0.5, 5000.0), violation=1.5))
    for arch in reversed(asked[4:]):
        searcher.tell(problem.evaluate(arch))
    searcher.tell(teacher)
    searcher.tell(problem.evaluate(problem.space.min()))  # never asked: replayed history
    assert searcher._teacher == dict(enumerate(teacher.values))
    feasible = [problem.cheap_violation(searcher.ask()) == 0 for _ in range(40)]
    assert sum(feasible) >= 36  # cheap constraints screened before asking


def test_replayed_teacher_is_not_asked_again():
    problem = toy_problem()
    searcher = N2NSearch(seed=0)
    searcher.setup(problem)
    searcher.tell(problem.evaluate(problem.space.max()))
    assert searcher.ask() != problem.space.max()


@pytest.mark.parametrize("kinds", [("depth", "depth"), ("width", "bits"), ("depth",)])
def test_spaces_with_one_stage_and_single_objective(kinds):
    space = Space([Dimension(f"d{i}", kind, (1, 2, 3)) for i, kind in enumerate(kinds)])
    problem = Problem(space, {"err": lambda a: 1 / (1 + sum(a.values()))}, ("err",))
    archs, _ = proposals(problem, 3 ** len(kinds) + 5)  # runs past exhaustion: repeats are then fine
    assert len({space.key(a) for a in archs}) == space.size


def test_exhausted_space_keeps_proposing():
    problem = toy_problem()
    archs, _ = proposals(problem, 60)
    assert len({problem.space.key(a) for a in archs}) == problem.space.size


@pytest.mark.parametrize("field, value", [("batch", 0), ("lr", -1.0), ("decay", 1.0), ("weights", ()),
                                          ("weights", (1.0, 0.0)), ("hidden", 2.5), ("retries", 0)])
def test_settings_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        N2NSearch(**{field: value})


def test_repr_shows_settings():
    assert repr(N2NSearch(seed=2)).startswith("N2NSearch(seed=2, batch=5, lr=0.01")
