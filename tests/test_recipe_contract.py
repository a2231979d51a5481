"""The contract every registered recipe keeps: steps on a fixed batch lower the loss; a run
checkpointed and resumed continues exactly; ``describe()`` rebuilds the recipe through JSON; the
same seed gives the same result."""

import json

import pytest
import torch

import onefit
from onefit.train import RECIPES, recipe_from, train

# Bits on every layer but one, a rank dimension on that one: every family recipe has what it needs.
CONFIG = onefit.ElasticConfig(width=(0.5, 1.0), bits=(4, 8), rank_layers={"4": (0.25, 1.0)})


def target_for(recipe, seed=0):
    """A family (most recipes), its largest sub-model as a plain module, or a chain of students."""
    torch.manual_seed(seed)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (torch.randn(2, 1, 8, 8),), CONFIG)
    if recipe.trains == "chain":
        from onefit.train import Chain

        return Chain([onefit.zoo.mlp(hidden=8, layers=1), onefit.zoo.mlp(hidden=8, layers=1)], family.example_inputs)
    if recipe.name == "adapters":  # trains adapters attached to a frozen family
        onefit.adapt(family, ranks=(2, 4))
    return family if recipe.trains == "family" else family.extract(family.space.max())


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n)]


@pytest.fixture(params=sorted(RECIPES))
def recipe_type(request):
    return RECIPES[request.param]


def test_steps_on_a_fixed_batch_lower_the_loss(recipe_type):
    recipe = recipe_type()
    target = target_for(recipe)
    optimizer = recipe.prepare(target) or torch.optim.Adam(target.parameters(), lr=1e-2)
    target.train(recipe.train_mode)
    batch = batches(1)[0]
    losses = [recipe.step(target, batch, optimizer)["loss_mean"] for _ in range(25)]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0], losses


def test_describe_rebuilds_the_recipe_through_json(recipe_type):
    recipe = recipe_type()
    data = json.loads(json.dumps(recipe.describe()))
    assert data["recipe"] == recipe.name and recipe_from(data).describe() == recipe.describe()


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_same_seed_same_result(recipe_type):
    results = []
    for _ in range(2):
        recipe = recipe_type()
        target = target_for(recipe)
        train(target, batches(), recipe, epochs=2, progress=False)
        results.append(_weights(target))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


class StopsAfter(list):
    """Batches that raise KeyboardInterrupt when a pass after the first ``epochs`` begins: a run
    stopped between two epochs."""

    def __init__(self, items, epochs: int):
        super().__init__(items)
        self.epochs, self.passes = epochs, 0

    def __iter__(self):
        self.passes += 1
        if self.passes > self.epochs:
            raise KeyboardInterrupt("stopped")
        return super().__iter__()


def test_a_checkpointed_run_resumed_continues_exactly(recipe_type, tmp_path):
    if recipe_type.trains != "family":
        pytest.skip("checkpoints hold families; this recipe trains a plain module")
    whole = target_for(recipe_type())
    train(whole, batches(), recipe_type(), epochs=3, checkpoint=tmp_path / "whole", progress=False)
    stopped = target_for(recipe_type())
    with pytest.raises(KeyboardInterrupt):
        train(stopped, StopsAfter(batches(), 1), recipe_type(), epochs=3, checkpoint=tmp_path / "part", progress=False)
    resumed = target_for(recipe_type(), seed=1)  # other initial weights: everything comes from the folder
    recipe = recipe_from(json.loads((tmp_path / "part" / "family.json").read_text())["history"][-1])
    train(resumed, batches(), recipe, epochs=3, checkpoint=tmp_path / "part", progress=False)
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.space == whole.space and [h["epoch"] for h in resumed.history] == [1, 2, 3]
