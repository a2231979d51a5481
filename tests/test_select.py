import pytest
import torch

import onefit


@pytest.fixture(scope="module")
def family():
    return onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))


def test_largest_within_fits_and_the_next_one_does_not(family):
    chain = family.space.nested_chain()
    params = [onefit.count_params(family, a) for a in chain]
    # Growing a block that the arch skips costs nothing, so look where the cost really steps up.
    i = next(i for i in range(4, len(chain) - 1) if params[i] < params[i + 1])
    pick = onefit.largest_within(family, params=(params[i] + params[i + 1]) // 2)
    assert onefit.count_params(family, pick) == params[i] and chain.index(pick) <= i
    macs = onefit.count_macs(family, chain[-2])
    assert onefit.count_macs(family, onefit.largest_within(family, params=10**9, macs=macs)) == macs
    assert onefit.largest_within(family, params=10**9) == family.space.max()


def test_impossible_or_unknown_budgets_are_clear_errors(family):
    with pytest.raises(onefit.BudgetError, match="no sub-model fits .* the smallest costs params="):
        onefit.largest_within(family, params=10)
    with pytest.raises(onefit.BudgetError, match="one or more of"):
        onefit.largest_within(family, latency=3)
    with pytest.raises(onefit.BudgetError):
        onefit.largest_within(family)


def test_distinct_chain_strictly_grows(family):
    from onefit.select import distinct_chain

    params = [onefit.count_params(family, a) for a in distinct_chain(family)]
    assert params == sorted(set(params)) and len(params) < len(family.space.nested_chain())
    assert params[0] == onefit.count_params(family, family.space.min())
    assert params[-1] == onefit.count_params(family, family.space.max())


def test_a_search_measuring_latency_fits_the_latency_model_that_latency_budgets_use():
    """latency_ms@b1 measured by the search fits the family's latency model as it goes; then a
    latency budget picks the largest sub-model predicted to fit it."""
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=2), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(width=(0.25, 0.5, 0.75, 1.0)))
    with pytest.raises(onefit.BudgetError, match="no latency model for ONNX Runtime at batch 1; search with a "
                                                 "latency_ms@b1 objective"):
        onefit.largest_within(family, latency_ms=1.0)
    data = [(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    problem = onefit.family_problem(family, data, objectives=("error", "latency_ms@b1"))
    front = onefit.search(problem, onefit.RandomSearch(seed=0), budget=16, progress=False)
    model = family.latency_models["onnxruntime-b1"]
    measured = [t for t in front.evaluated if not t.predicted]  # how many: as the timings fall
    assert all(not t.predicted for t in front)
    assert model.fit_error["n"] == 6 + 4 * ((len(measured) - 6) // 4) and model.batch == 1  # refitted every 4th
    guess, margin = problem.metrics["latency_ms@b1"].estimate(family.space.min())  # what spares measurements
    assert guess == model.predict(family, family.space.min()) and margin >= 0.25
    chain = family.space.nested_chain()
    predicted = [model.predict(family, a) for a in chain]
    limit = (min(predicted) + max(predicted)) / 2
    pick = onefit.largest_within(family, **{"latency_ms@b1": limit})
    assert model.predict(family, pick) <= limit
    later = chain[chain.index(pick) + 1:]
    assert all(model.predict(family, a) > limit for a in later) or not later
    with pytest.raises(onefit.BudgetError, match="the smallest costs latency_ms="):
        onefit.largest_within(family, latency_ms=min(predicted) / 10)
