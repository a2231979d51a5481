"""The standard problem over a family: error after batch-norm re-estimation, counts, latency, subspaces."""

import random

import pytest
import torch

import onefit
from onefit.cost.latency_model import LatencyModel
from onefit.data import digits, validation_split
from onefit.search import family_problem, search
from onefit.search.base import Searcher
from onefit.space import Dimension, Space


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train_all, _ = digits(batch_size=64)
    train_data, val = validation_split(train_all)
    model = onefit.zoo.resnet(in_channels=1, widths=(8, 16), blocks=(2, 2), classes=10)
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),))
    onefit.train(family, train_data, onefit.SortedNetRecipe(), epochs=1, progress=False)
    return family, train_data, val


def test_error_is_that_of_the_extracted_sub_model_with_its_own_batch_norm(trained):
    family, train_data, val = trained
    batches = [next(iter(train_data)) for _ in range(4)]
    problem = family_problem(family, val, calibration=batches, bn_batches=3)
    arch = family.space.sample(random.Random(1))
    trial = problem.evaluate(arch)
    sub = onefit.recalibrate_bn(family.extract(arch), batches[:3], batches=3)
    assert trial.values[0] == pytest.approx(1 - onefit.evaluate(sub, val) / 100)
    assert problem.evaluate(arch).values == trial.values  # the same calibration batches every time
    assert trial.metrics["params"] == onefit.count_params(family, arch)
    assert trial.metrics["macs"] == onefit.count_macs(family, arch)
    assert set(problem.cheap) == {"macs", "params"}


def test_latency_from_a_latency_model_is_a_cheap_objective(trained):
    family, _, val = trained
    archs = [family.space.sample(random.Random(i)) for i in range(12)]
    fake_ms = [1e-6 * onefit.count_macs(family, a) + 0.05 for a in archs]
    model = LatencyModel.fit(family, archs, fake_ms, backend="onnxruntime", batch=1)
    problem = family_problem(family, val, objectives=("error", "latency_ms"), latency=model,
                             constraints={"latency_ms": 10.0})
    assert problem.cheap == ("latency_ms",)
    assert problem.compute(archs[0], ["latency_ms"])["latency_ms"] == pytest.approx(fake_ms[0], rel=0.05)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['latency_ms'\]"):
        family_problem(family, val, objectives=("error", "latency_ms"))  # no model: say what exists


def test_measured_latency_runs_the_sub_model_on_onnx_runtime(trained):
    family, _, val = trained
    problem = family_problem(family, val, objectives=("error", "latency_ms"), latency="measure")
    trial = problem.evaluate(family.space.min())
    assert not trial.failed and 0 < trial.metrics["latency_ms"] < 100
    assert problem.cheap == ()


def test_a_subspace_fixes_choices_and_is_checked(trained):
    family, _, val = trained
    first = family.space.names[0]
    part = Space([Dimension(d.name, d.kind, d.choices[-1:]) if d.name == first else d for d in family.space])
    problem = family_problem(family, val, space=part)
    assert problem.space[first].choices == (family.space[first].choices[-1],)
    wrong = Space([Dimension(d.name, d.kind, (999,)) if d.name == first else d for d in family.space])
    with pytest.raises(ValueError, match=f"{first} choices \\[999\\] are not among the family's"):
        family_problem(family, val, space=wrong)
    with pytest.raises(ValueError, match="space must have the family's dimensions"):
        family_problem(family, val, space=Space([Dimension("x", "width", (1, 2))]))


class Scripted(Searcher):
    """Asks the archs it is given, in order; passes what it is told to ``on_tell`` (search() copies
    the searcher, so the test sees the tells through this function)."""

    def __init__(self, archs, on_tell):
        super().__init__()
        self.archs, self.on_tell = list(archs), on_tell

    def ask(self):
        return self.archs.pop(0)

    def tell(self, trial):
        self.on_tell(trial)


def test_a_search_measures_each_sub_model_once(trained):
    family, _, val = trained
    problem = family_problem(family, val)
    small = family.space.min()  # skips blocks: the widths inside them are idle
    idle = family.idle(small)
    assert any(n.startswith("width:") for n in idle)
    twin = {**small, **{n: family.space[n].choices[-1] for n in idle}}  # another arch, the same sub-model
    assert twin != small and problem.key(twin) == problem.key(small)
    assert problem.key(family.space.max()) != problem.key(small)
    told = []
    front = search(problem, Scripted([small, twin, family.space.max()], lambda t: told.append(t)),
                   budget=2, progress=False)
    assert [t.arch for t in front.evaluated] == [small, family.space.max()]  # the twin cost nothing
    assert [t.arch for t in told] == [small, twin, family.space.max()]  # each ask answered with its own arch
    assert told[1].values == told[0].values


def test_a_subspace_without_the_largest_widths_still_dedupes(trained):
    family, _, val = trained
    part = Space([Dimension(d.name, d.kind, d.choices[:-1]) if d.kind == "width" else d for d in family.space])
    problem = family_problem(family, val, space=part)
    small = part.min()
    twin = {**small, **{n: part[n].choices[-1] for n in family.idle(small)}}
    assert twin != small and problem.key(twin) == problem.key(small)


@pytest.mark.parametrize("name", ["random", "nsga2", "linas", "n2n"])
def test_searchers_do_not_propose_a_sub_model_twice(trained, name):
    from onefit.search import SEARCHERS

    family, train_data, val = trained
    problem = family_problem(family, val, calibration=train_data, bn_batches=1)
    asks = []

    class Counted(SEARCHERS[name]):
        def ask(self):
            asks.append(1)
            return super().ask()

    front = search(problem, Counted(seed=0), budget=25, progress=False)
    assert len(front.evaluated) == 25 and len(asks) == 25  # no ask spent on another arch of a measured sub-model
