"""Tests that kill mutants `make mutants` found surviving (bench/results/mutants.md): each pins one
behaviour the rest of the suite left open. Small and fast; public APIs except where noted."""

from __future__ import annotations

import json
import random
from types import MappingProxyType

import numpy as np
import pytest
import torch

from onefit.checkpoint import CheckpointError, build_from_source, example_inputs_of
from onefit.search.base import Trial
from onefit.search.nsga2 import NSGA2Search, crowding, make_offspring, survival_order
from onefit.search.pareto import Front
from onefit.search.problem import Problem, toy_problem
from onefit.space import Dimension, Space
from onefit.train.quantized import QuantizedDistillationConfig, QuantizedDistillationRecipe


# -- NSGA-II: crowding distance and survival order ---------------------------------------------
def _crowding_by_hand(values: np.ndarray) -> np.ndarray:
    """Deb et al.'s crowding distance, ties broken by row order (the first of tied rows sorts first)."""
    n, m = values.shape
    if n <= 2:
        return np.full(n, np.inf)
    d = np.zeros(n)
    for k in range(m):
        order = sorted(range(n), key=lambda i: (values[i, k], i))
        lo, hi = values[order[0], k], values[order[-1], k]
        d[order[0]] = d[order[-1]] = np.inf
        for j in range(1, n - 1):
            if hi > lo:
                d[order[j]] += (values[order[j + 1], k] - values[order[j - 1], k]) / (hi - lo)
    return d


def test_crowding_distance_is_the_normalised_gap_around_each_point():
    values = np.array([[1.0, 5.0], [1.5, 4.2], [2.5, 3.5], [2.75, 3.4], [3.0, 3.0]])  # spreads 2 and 2, not from 0
    expected = [np.inf, (2.5 - 1.0) / 2 + (5.0 - 3.5) / 2, (2.75 - 1.5) / 2 + (4.2 - 3.4) / 2,
                (3.0 - 2.5) / 2 + (3.5 - 3.0) / 2, np.inf]
    assert crowding(values).tolist() == pytest.approx(expected)
    small = values / 10  # spreads below 1
    assert crowding(small)[1:4] == pytest.approx(np.array(expected[1:4]))
    assert np.isfinite(crowding(np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]))[1])  # 3 points: the middle is finite


def test_crowding_of_two_points_is_infinite_and_a_constant_objective_adds_nothing():
    two = crowding(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert two.dtype == np.float64 and np.isinf(two).all()
    flat = crowding(np.array([[0.0, 2.0], [0.5, 2.0], [1.0, 2.0]]))  # second objective constant
    assert flat[1] == pytest.approx(1.0) and not np.isnan(flat).any()


def test_crowding_breaks_ties_by_row_order():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3, size=(40, 2)).astype(float)  # many ties in both objectives
    assert crowding(values).tolist() == _crowding_by_hand(values).tolist()


def test_survival_order_puts_feasible_first_and_infeasible_by_violation_stably():
    values = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.2], [0.9, 0.9]])
    violation = np.array([0.0, 0.0, 0.5, 0.0, 0.0])  # a violation below 1 is still infeasible
    order = survival_order(values, violation).tolist()
    assert sorted(order) == list(range(5)) and order[-1] == 2
    assert set(order[:3]) == {0, 1, 3} and order[3] == 4  # the first front, then the dominated point
    ties = np.array([0.3, 0.1, 0.3, 0.1, 0.2] * 6)
    got = survival_order(np.zeros((30, 2)), ties).tolist()
    assert got == sorted(range(30), key=lambda i: (ties[i], i))


# -- NSGA-II: offspring ------------------------------------------------------------------------
def _space(sizes) -> Space:
    return Space([Dimension(f"d{i}", "width", tuple(range(1, s + 1))) for i, s in enumerate(sizes)])


def _mutation_shares(start: int, size: int = 5, n: int = 4000) -> np.ndarray:
    space = _space([size] * 4)
    children = make_offspring(space, [[start] * 4], random.Random(0), n, crossover=0.0, mutation=1.0)
    return np.bincount(np.array(children).ravel(), minlength=size) / (4 * n)


@pytest.mark.parametrize("start", [1, 2])
def test_mutation_steps_one_choice_up_or_down_or_rarely_anywhere(start):
    # every gene mutates: 80 % a step of -1 or +1 (clipped), 20 % a uniform choice
    size = 5
    expected = np.full(size, 0.2 / size)
    expected[max(start - 1, 0)] += 0.4
    expected[min(start + 1, size - 1)] += 0.4
    assert _mutation_shares(start, size) == pytest.approx(expected, abs=0.012)


def test_mutation_reaches_two_choice_dimensions_and_never_one_choice_ones():
    space = _space([2, 1])
    children = make_offspring(space, [[0, 0]], random.Random(0), 500, crossover=0.0, mutation=1.0)
    assert {c[1] for c in children} == {0}
    assert 0.4 < np.mean([c[0] for c in children]) < 0.8  # moved up by steps (and uniform draws)


def test_without_crossover_or_mutation_children_copy_a_parent_and_better_parents_win_tournaments():
    space = _space([5] * 6)
    a, b = [0] * 6, [4] * 6
    children = make_offspring(space, [a, b], random.Random(0), 4000, crossover=0.0, mutation=1e-12)
    assert all(c in (a, b) for c in children)
    assert np.mean([c == a for c in children]) == pytest.approx(0.75, abs=0.03)  # min of two draws


def test_uniform_crossover_mixes_genes_and_defaults_to_0_9():
    space = _space([5] * 6)
    a, b = [0] * 6, [4] * 6
    n = 20000
    mixed = make_offspring(space, [a, b], random.Random(0), n, crossover=1.0, mutation=1e-12)
    genes = np.array(mixed)
    assert set(genes.ravel().tolist()) == {0, 4}
    assert np.mean(genes == 0) == pytest.approx(0.75, abs=0.01)  # tournaments pick a with 3/4
    # a child is a whole parent when both picks are the same parent, or by luck (6 genes from one side)
    whole = 0.75 ** 2 + 0.25 ** 2 + 2 * 0.75 * 0.25 * 2 * 0.5 ** 6
    assert np.mean([c in (a, b) for c in mixed]) == pytest.approx(whole, abs=0.01)
    default = make_offspring(space, [a, b], random.Random(0), n, mutation=1e-12)  # crossover 0.9
    assert np.mean([c in (a, b) for c in default]) == pytest.approx(0.1 + 0.9 * whole, abs=0.01)


def test_default_mutation_rate_is_one_over_the_dimensions():
    space = _space([5] * 4)
    parent = [2] * 4
    children = np.array(make_offspring(space, [parent], random.Random(0), 4000, crossover=0.0))
    changed = np.mean(children != 2)  # a mutated middle gene changes with probability 0.8 + 0.2 * 4/5
    assert changed == pytest.approx(0.25 * 0.96, abs=0.02)


# -- NSGA-II: the searcher ---------------------------------------------------------------------
def _tiny_problem() -> Problem:
    space = _space([2, 2, 2])
    return Problem(space, {"x": lambda a: float(sum(a.values())), "y": lambda a: float(-sum(a.values()))},
                   ("x", "y"))


def test_nsga2_defaults_and_first_asks_are_the_smallest_then_the_largest():
    s = NSGA2Search()
    assert (s.population, s.crossover, s.mutation, s.seed) == (20, 0.9, None, 0)
    NSGA2Search(crossover=0.0, mutation=1.0)  # the bounds themselves are allowed
    for bad in (dict(mutation=0.0), dict(mutation=1.5), dict(crossover=1.5)):
        with pytest.raises(ValueError, match=r"^NSGA2Search: crossover in \[0, 1\] and mutation in \(0, 1\]"):
            NSGA2Search(**bad)
    problem = toy_problem()
    sample, drawn = problem.space.sample, []
    problem.space.sample = lambda rng: drawn.append(1) or sample(rng)  # the space's own draws, counted
    s = NSGA2Search(population=4, seed=3)
    s.setup(problem)
    assert [s.ask(), s.ask()] == [problem.space.min(), problem.space.max()]
    assert len(drawn) == 2  # the first generation: the smallest, the largest and population - 2 random archs


def test_nsga2_asks_every_arch_once_before_repeating_and_then_repeats_without_error():
    problem = _tiny_problem()
    s = NSGA2Search(population=4, seed=0)
    s.setup(problem)
    asked = [problem.space.key(s.ask()) for _ in range(problem.space.size)]
    assert len(set(asked)) == problem.space.size  # nothing told: still no repeat
    for key in asked:
        arch = json.loads(key)
        s.tell(Trial(arch, (float(sum(arch.values())), float(-sum(arch.values())))))
    assert problem.space.key(s.ask()) in asked  # exhausted: a repeat, not an error


def test_nsga2_explores_at_random_until_two_trials_are_told():
    s = NSGA2Search(population=4, seed=0)
    s.setup(toy_problem())
    archs = [s.ask() for _ in range(9)]  # nothing told: past the first generation, random archs
    assert all(toy_problem().space.validate(a) for a in archs)


def test_nsga2_parents_are_the_best_told_trials_without_failed_ones():
    problem = _tiny_problem()
    s = NSGA2Search(population=4, seed=0)
    s.setup(problem)
    archs = [dict(zip(problem.space.names, bits)) for bits in
             [(1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 2, 2), (2, 1, 1), (2, 2, 1)]]
    s.tell(Trial(archs[0], None, error="boom"))  # failed: never a parent
    s.tell(Trial(archs[1], (1.0, 1.0), violation=2.0))
    s.tell(Trial(archs[2], (2.0, 2.0)))  # dominated by archs[3]
    s.tell(Trial(archs[3], (1.0, 1.0)))
    s.tell(Trial(archs[4], (0.0, 3.0)))
    s.tell(Trial(archs[5], (3.0, 0.0)))
    parents = s.parents()
    assert [p.arch for p in parents[:3]] == [archs[4], archs[5], archs[3]] or \
        {problem.space.key(p.arch) for p in parents[:3]} == {problem.space.key(a) for a in archs[3:]}
    assert [p.arch for p in parents] [3] == archs[2] and len(parents) == 4


def test_nsga2_offspring_of_two_told_trials_mix_them_with_the_given_rates():
    problem = toy_problem()
    s = NSGA2Search(population=4, crossover=1.0, mutation=1e-9, seed=0)
    s.setup(problem)
    first = [s.ask() for _ in range(4)]
    lo, hi = problem.space.min(), problem.space.max()
    assert first[:2] == [lo, hi]
    s.tell(Trial(lo, (1.0, 0.0)))
    s.tell(Trial(hi, (0.0, 1.0)))
    later = [s.ask() for _ in range(4)]
    for arch in later:  # uniform crossover of the two parents, no mutation: each choice is an end
        assert all(arch[n] in (lo[n], hi[n]) for n in problem.space.names), arch


# -- Pareto front ------------------------------------------------------------------------------
def _front(n: int = 3, seconds: float = 1.234567) -> Front:
    problem = toy_problem()
    trials = [problem.evaluate({"a": a, "b": 3, "c": 8}) for a in (1, 2, 4)[:n]]
    trials = [Trial(t.arch, t.values, t.violation, t.metrics, seconds) for t in trials]
    return Front(trials + [Trial({"a": 1, "b": 1, "c": 4}, None, error="x")], problem.objectives)


def test_front_values_are_float_even_for_integer_objectives_and_the_repr_names_the_objectives():
    front = Front([Trial({"a": 1}, (1, 2)), Trial({"a": 2}, (2, 1))], ("p", "q"))
    assert front.values().dtype == np.float64
    assert repr(front) == "Front(2 archs of 2 evaluated; objectives ['p', 'q'])"
    assert repr(_space([2, 1])) == "Space(d0=[1, 2], d1=[1])"


def test_hypervolume_scales_between_ideal_and_reference_and_checks_them():
    front = Front([Trial({"a": 1}, (2.0, 6.0)), Trial({"a": 2}, (4.0, 4.0))], ("p", "q"))
    # box from ideal (1, 2) to reference (5, 10): scaled points (0.25, 0.5) and (0.75, 0.25)
    hv = front.hypervolume({"p": 5.0, "q": 10.0}, ideal={"p": 1.0, "q": 2.0})
    assert hv == pytest.approx(0.75 * 0.5 + 0.25 * 0.25)
    assert Front([], ("p", "q")).hypervolume({"p": 1.0, "q": 1.0}) == 0.0
    for ref in ({"p": 1.0, "q": 10.0}, {"p": 0.5, "q": 10.0}):
        with pytest.raises(ValueError, match=r"hypervolume: reference \{'p': .*\} must exceed the ideal point"):
            front.hypervolume(ref, ideal={"p": 1.0, "q": 2.0})


def test_best_errors_name_what_the_front_has():
    one = _front(1)
    assert one.best().arch["a"] == 1
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['speed'\]; the front has \['loss', 'size'\]"):
        one.best(speed=1.0)
    with pytest.raises(ValueError, match=r"^front.best: the front is empty \(no feasible arch was evaluated\)$"):
        Front([], ("loss", "size")).best()
    with pytest.raises(ValueError, match=r"the least each reaches is \{'size': 3.0\}"):
        one.best(size=0.1)


def test_front_json_and_csv(tmp_path):
    front = _front(2)
    data = front.to_json()
    assert set(data) == {"objectives", "evaluated", "failed", "front"}
    assert (data["objectives"], data["evaluated"], data["failed"]) == (["loss", "size"], 3, 1)
    front.save_json(tmp_path / "f.json")
    text = (tmp_path / "f.json").read_text()
    assert json.loads(text) == json.loads(json.dumps(data)) and "\n" in text
    rows = front.to_csv().splitlines()
    assert rows[0] == "loss,size,seconds,a,b,c" and rows[1].split(",")[2:] == ["1.2346", "2", "3", "8"]
    assert float(rows[1].split(",")[1]) == 6.0
    assert _front(1).to_csv().splitlines()[1].endswith("1.2346,1,3,8")
    assert Front([], ("loss", "size")).to_csv().strip() == "seconds"


# -- spaces ------------------------------------------------------------------------------------
def test_nested_chain_grows_dimensions_evenly():
    space = Space([Dimension("a", "width", (1, 2, 3, 4, 5)), Dimension("b", "depth", (1, 2, 3))])
    grown = []
    chain = space.nested_chain()
    for before, after in zip(chain, chain[1:]):
        grown += [n for n in space.names if before[n] != after[n]]
    assert grown == ["a", "a", "b", "a", "a", "b"]


# -- quantized distillation --------------------------------------------------------------------
def test_quantized_config_normalises_and_checks_its_fields():
    cfg = QuantizedDistillationConfig(bits=[4, 2], archs=[MappingProxyType({"a": 1})])
    assert cfg.bits == (4, 2) and cfg.archs == ({"a": 1},) and type(cfg.archs[0]) is dict
    for ok in (dict(temperature=0.5), dict(distill_weight=0.0), dict(distill_weight=1.0)):
        QuantizedDistillationConfig(**ok)
    with pytest.raises(ValueError, match=r"^QuantizedDistillationConfig\.temperature must be > 0"):
        QuantizedDistillationConfig(temperature=0.0)
    with pytest.raises(ValueError, match=r"QuantizedDistillationConfig\.bits"):
        QuantizedDistillationConfig(bits=(5,))


def _bits_family():
    import onefit

    torch.manual_seed(0)
    return onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (torch.randn(2, 1, 8, 8),),
                             onefit.ElasticConfig(width=(0.5, 1.0), depth=False, bits=(2, 4)))


def _grads(family):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in family.parameters()]


@pytest.mark.parametrize("teacher", ["inplace", "none"])
def test_quantized_step_averages_the_losses_of_the_teacher_and_the_students(teacher):
    from onefit.tasks import ClassificationTask, first_output

    family = _bits_family()
    task = ClassificationTask()
    cfg = QuantizedDistillationConfig(bits=(2, 4), teacher=teacher, distill_weight=0.3)
    recipe = QuantizedDistillationRecipe(cfg)
    assert recipe.rng.random() == random.Random(cfg.seed).random()
    torch.manual_seed(1)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    out = recipe.step(family, batch, torch.optim.SGD(family.parameters(), lr=0.0))
    got = _grads(family)

    family.zero_grad(set_to_none=True)
    students = recipe.students(family.space)
    total, soft, losses = 0.0, None, []
    if teacher == "inplace":
        with family.activate(family.space.max()):
            t_logits = first_output(family(batch[0]))
        t_loss = task.loss(t_logits, batch)
        total, soft = t_loss, t_logits.detach()
    for arch in students:
        with family.activate(arch):
            loss = task.student_loss(first_output(family(batch[0])), batch, soft, 0.3, cfg.temperature)
        losses.append(loss.item())
        total = total + loss
    (total / (len(students) + (teacher == "inplace"))).backward()
    for g, h in zip(got, _grads(family)):
        assert torch.allclose(g, h, atol=1e-6)
    assert out["loss_mean"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    largest = t_loss.item() if teacher == "inplace" else losses[0]
    assert out["loss_largest"] == pytest.approx(largest, rel=1e-5)


def test_quantized_students_include_completed_archs_and_errors_say_what_is_missing():
    family = _bits_family()
    name = next(d.name for d in family.space if d.kind == "bits")
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(2,), archs=({name: 4},)))
    assert recipe.students(family.space)[1] == family.space.complete({name: 4})
    with pytest.raises(ValueError, match="^quantized distillation needs bits dimensions: elasticize with "
                                         r"ElasticConfig\(bits=...\)$"):
        recipe.students(_space([2]))
    external = QuantizedDistillationRecipe(QuantizedDistillationConfig(teacher="external"))
    with pytest.raises(ValueError, match=r"^QuantizedDistillationConfig.teacher='external' needs a teacher "
                                         r"module passed to step\(\)$"):
        external.step(family, (torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))),
                      torch.optim.SGD(family.parameters(), lr=0.0))


# -- checkpoint manifests ----------------------------------------------------------------------
def test_example_inputs_of_a_manifest():
    x, y = example_inputs_of({"example_inputs": [{"shape": [2, 0], "dtype": "float16"},
                                                 {"shape": [3], "dtype": "int64"}]})
    assert x.shape == (2, 0) and x.dtype == torch.float16 and y.dtype == torch.int64 and not y.any()
    for bad in ([1, 2], {"shape": [-1], "dtype": "float32"}, {"shape": [2], "dtype": "no_such_dtype"},
                {"shape": [2.0], "dtype": "float32"}):
        with pytest.raises(CheckpointError, match="an example input must be"):
            example_inputs_of({"example_inputs": [bad]})


def test_build_from_source_refuses_foreign_code_by_default_and_names_the_problem():
    with pytest.raises(CheckpointError, match=r"^this family records no model factory \(the model was not built by "
                                              r"onefit.zoo\); pass the original model: load\(dir, model=...\)$"):
        build_from_source(None)
    with pytest.raises(CheckpointError, match="kwargs must be a JSON object, got list"):
        build_from_source({"factory": "onefit.zoo:mlp", "kwargs": [1]})
    with pytest.raises(CheckpointError, match="not one of onefit's own factories"):
        build_from_source({"factory": "collections:OrderedDict"})


# -- dimension kinds and families --------------------------------------------------------------
def test_register_kind_needs_names_and_registers_each_name_once():
    from onefit import space as space_module
    from onefit.dims import KINDS, Kind, register_kind

    class Nameless(Kind):
        pass

    class Bare:  # not even Kind's empty names
        pass

    for cls in (Nameless, Bare):
        with pytest.raises(TypeError, match=f"{cls.__name__} needs a class attribute 'names'"):
            register_kind(cls)

    class Twin(Kind):
        names = ("mutant_test_a", "mutant_test_b", "width")

    before = list(space_module.KINDS)
    try:
        assert register_kind(Twin) is Twin
        assert KINDS["mutant_test_a"] is Twin and "mutant_test_b" not in KINDS
        assert space_module.KINDS == before + ["mutant_test_a", "mutant_test_b"]  # "width" not twice
    finally:
        KINDS.pop("mutant_test_a", None)
        space_module.KINDS[:] = before


def test_restrict_records_only_the_dimensions_that_changed_and_refuses_other_spaces():
    import onefit

    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
    with pytest.raises(KeyError, match=r"no dimension kind 'nope'; registered: \["):
        family.kind("nope")
    history = list(family.space_history)
    family.restrict_(family.space, by="nothing")
    assert family.space_history == history  # nothing left out: nothing recorded
    dims = list(family.space)
    smaller = Space([Dimension(d.name, d.kind, d.choices[1:]) if i == 0 else d for i, d in enumerate(dims)])
    family.restrict_(smaller, by="test")
    assert family.space == smaller
    assert family.space_history == history + [{"by": "test", "choices": {dims[0].name: list(dims[0].choices[1:])}}]
    with pytest.raises(ValueError, match=r"restrict_: Space\(.*\) is not Space\(.*\) with choices left out"):
        family.restrict_(Space(dims), by="grow")


def test_l1_importance_is_the_sum_of_mean_one_l1_norms():
    from torch import nn

    from onefit.importance import L1Importance

    a, b = nn.Linear(3, 4), nn.Linear(2, 4)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 0, 0], [2, 0, 0], [3, 0, 0], [2, 0, 0]]))  # norms 1 2 3 2, mean 2
        b.weight.copy_(torch.tensor([[0.25, 0], [0.25, 0], [0.25, 0], [1.25, 0]]))  # mean 0.5, below 1
    got = L1Importance()([a, b])
    assert torch.allclose(got, torch.tensor([0.5 + 0.5, 1.0 + 0.5, 1.5 + 0.5, 1.0 + 2.5]))


def test_space_key_sorts_the_names_whatever_the_dimension_order():
    space = Space([Dimension("b", "width", (1, 2)), Dimension("a", "depth", (1, 2))])
    assert space.key({"b": 2, "a": 1}) == '{"a":1,"b":2}'


def test_sortednet_step_uses_the_given_task_and_reports_the_mean_loss():
    import onefit
    from onefit.tasks import ClassificationTask
    from onefit.train.sorted import SortedNetConfig, SortedNetRecipe, nested_backward

    class Counting(ClassificationTask):
        calls = 0

        def student_loss(self, *args, **kwargs):
            Counting.calls += 1
            return super().student_loss(*args, **kwargs)

    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
    recipe = SortedNetRecipe(SortedNetConfig(distill_weight=0.3, seed=1))
    assert set(recipe.describe()) == {"recipe", "config", "sampler"}
    assert recipe.describe()["config"]["distill_weight"] == 0.3
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    out = recipe.step(family, batch, torch.optim.SGD(family.parameters(), lr=0.0), task=Counting())
    archs = recipe.sampler(family.space, random.Random(1))
    assert Counting.calls == len(archs)
    losses = nested_backward(family, archs, batch, recipe.config)
    assert out["loss_mean"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert out["loss_largest"] == pytest.approx(losses[0], rel=1e-5)
