"""TreeSearch: DeepArchitect's MCTS behind ask/tell."""

from __future__ import annotations

import math
import zlib

import moocore
import numpy as np
import pytest

from onefit.search.base import Trial
from onefit.search.problem import Metric, Problem, toy_problem
from onefit.search.random_search import RandomSearch
from onefit.search.mcts import TreeSearch
from onefit.space import Dimension, Space


def clustered_problem(widths: int = 7, bad: float = 3.0, noise: float = 0.5):
    """Two objectives (loss, size); every arch under ``branch=5`` has 1/bad the loss of its twins
    under the other branches, so the whole Pareto front sits in one subtree of the root. A
    deterministic per-arch wobble on the loss makes the front more than a function of size.
    Returns the problem and the objectives' lower and upper bounds, for normalising."""
    space = Space([Dimension("branch", "kernel", (1, 3, 5, 7))]
                  + [Dimension(f"w{i}", "width", (1, 2, 3)) for i in range(widths)])

    def size(arch):
        return float(sum(arch[f"w{i}"] * (i + 1) for i in range(widths)))

    def loss(arch):
        wobble = zlib.crc32(space.key(arch).encode()) / 2**32
        return (1.0 if arch["branch"] == 5 else bad) / size(arch) * (1 + noise * wobble)

    smallest = sum(range(1, widths + 1))
    low = np.array([1 / (3 * smallest), smallest])
    high = np.array([bad * (1 + noise) / smallest, 3 * smallest])
    problem = Problem(space, {"loss": Metric(loss), "size": Metric(size, cheap=True)}, ("loss", "size"))
    return problem, low, high


def drive(searcher, problem, n):
    searcher.setup(problem)
    trials = []
    for _ in range(n):
        trials.append(problem.evaluate(searcher.ask()))
        searcher.tell(trials[-1])
    return trials


def test_contract_and_settings():
    problem = toy_problem()
    s = TreeSearch(seed=0)
    s.setup(problem)
    a = s.ask()
    s.tell(problem.evaluate(a))
    assert repr(TreeSearch(exploration=0.5, seed=2)) == "TreeSearch(seed=2, exploration=0.5)"
    for bad in (0, -1.0, math.nan, math.inf, "1", True):
        with pytest.raises(ValueError, match="exploration must be a finite number > 0"):
            TreeSearch(exploration=bad)


def test_same_seed_same_proposals():
    problem, _, _ = clustered_problem()

    def proposals(seed):
        s = TreeSearch(seed=seed)
        s.setup(problem)
        archs = [s.ask() for _ in range(3)]  # a batch first, then interleaved
        for a in archs:
            s.tell(problem.evaluate(a))
        for _ in range(25):
            archs.append(s.ask())
            s.tell(problem.evaluate(archs[-1]))
        return archs

    assert proposals(4) == proposals(4)
    assert proposals(4) != proposals(5)


def test_proposals_valid_and_distinct_until_the_space_is_exhausted():
    problem = toy_problem()  # 36 archs
    s = TreeSearch(seed=1)
    s.setup(problem)
    batch = [s.ask() for _ in range(12)]  # asks before any tell: virtual losses spread them
    keys = [problem.space.key(a) for a in batch]
    assert len(set(keys)) == 12
    for a in batch:
        s.tell(problem.evaluate(a))
    while len(keys) < problem.space.size:
        a = s.ask()
        keys.append(problem.space.key(a))  # key() validates
        s.tell(problem.evaluate(a))
    assert len(set(keys)) == problem.space.size
    assert problem.space.validate(s.ask())  # exhausted: a repeat, still valid


def test_beats_random_search_when_good_archs_cluster_in_a_subtree():
    problem, low, high = clustered_problem()

    def mean_hypervolume(make):
        volumes = []
        for seed in range(5):
            values = np.array([t.values for t in drive(make(seed), problem, 60)])
            volumes.append(moocore.hypervolume((values - low) / (high - low), ref=[1.1, 1.1]))
        return float(np.mean(volumes))

    tree = mean_hypervolume(lambda seed: TreeSearch(seed=seed))
    uniform = mean_hypervolume(lambda seed: RandomSearch(seed=seed))
    assert tree > uniform + 0.02, (tree, uniform)  # measured: 1.035 vs 0.992


def test_failed_and_infeasible_trials_score_below_feasible_ones():
    problem = toy_problem(constraints={"size": 6})
    s = TreeSearch(seed=0)
    s.setup(problem)
    feasible = problem.evaluate({"a": 2, "b": 2, "c": 8})
    slightly = problem.evaluate({"a": 4, "b": 2, "c": 8})  # size 8
    badly = problem.evaluate({"a": 4, "b": 3, "c": 32})  # size 48
    failed = Trial({"a": 1, "b": 1, "c": 4}, None, error="x")
    assert feasible.feasible and 0 < slightly.violation < badly.violation
    for t in (failed, badly, slightly, feasible, Trial(problem.space.min(), (math.nan, 1.0))):
        s.tell(t)
    s._refresh_scores()
    assert s._scores[3] == 1.0 > s._scores[2] > s._scores[1] > s._scores[0] == 0.0 == s._scores[4]
    assert problem.space.validate(s.ask())


def test_replayed_history_rebuilds_the_tree():
    problem, _, _ = clustered_problem()
    history = drive(TreeSearch(seed=0), problem, 30)
    resumed = TreeSearch(seed=0)
    resumed.setup(problem)
    for t in history:  # archs this searcher never asked
        resumed.tell(t)
    assert len(resumed._root.trials) == 30 and resumed._root.pending == 0
    by_branch = {b: sum(t.arch["branch"] == b for t in history) for b in (1, 3, 5, 7)}
    assert {b: len(resumed._root.children[i].trials) if i in resumed._root.children else 0
            for i, b in enumerate((1, 3, 5, 7))} == by_branch
    told = {problem.space.key(t.arch) for t in history}
    assert all(problem.space.key(resumed.ask()) not in told for _ in range(10))
