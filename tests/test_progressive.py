"""Progressive shrinking: the phases sample only what they have released, in order; a schedule
naming a kind the family lacks is refused; a run stopped inside a phase resumes exactly."""

import pytest
import torch

import onefit
from onefit.train import ProgressiveShrinkingConfig, ProgressiveShrinkingRecipe
from test_recipe_contract import StopsAfter


def kernel_family(seed=0):
    torch.manual_seed(seed)
    config = onefit.ElasticConfig(width=(0.5, 1.0), kernel=(3, 5))
    return onefit.elasticize(onefit.zoo.mobilenet_v3(kernel=7), (torch.randn(1, 1, 8, 8),), config)


def batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def test_each_phase_samples_only_what_it_released(monkeypatch):
    family = kernel_family()
    recipe = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=1))
    assert recipe.schedule(family) == [(), ("kernel",), ("depth",), ("width",)]
    seen = []
    from onefit.train import progressive

    def record(family, archs, batch, config, teacher=None, task=None):
        seen.append(archs)
        return [1.0] * len(archs)

    monkeypatch.setattr(progressive, "nested_backward", record)
    optimizer = torch.optim.SGD(family.parameters(), lr=0.0)
    for _ in range(4):
        recipe.step(family, batches(1)[0], optimizer)
    top = family.space.max()
    assert seen[0] == [top]  # the full network alone
    changed = [{k.split(":")[0] for a in archs for k in a if a[k] != top[k]} for archs in seen[1:]]
    assert changed == [{"kernel"}, {"kernel", "depth"}, {"kernel", "depth", "width"}]


def test_a_schedule_naming_a_kind_the_family_lacks_is_refused():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
    recipe = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phases=(("kernel",), ("width",))))
    with pytest.raises(ValueError, match=r"names \['kernel'\], which this family does not have; its dimension kinds are \['width'\]"):
        recipe.step(family, batches(1)[0], torch.optim.SGD(family.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="phase_steps: non-negative"):
        ProgressiveShrinkingConfig(phase_steps=(-1,))
    with pytest.raises(ValueError, match="phases: a non-empty tuple"):
        ProgressiveShrinkingConfig(phases=())


def test_a_run_stopped_inside_a_phase_resumes_exactly(tmp_path):
    config = ProgressiveShrinkingConfig(phase_steps=(2, 2, 2))  # phases change inside the epochs
    whole = kernel_family()
    onefit.train(whole, batches(), ProgressiveShrinkingRecipe(config), epochs=3, checkpoint=tmp_path / "a", progress=False)
    stopped = kernel_family()
    with pytest.raises(KeyboardInterrupt):
        onefit.train(stopped, StopsAfter(batches(), 1), ProgressiveShrinkingRecipe(config), epochs=3,
                     checkpoint=tmp_path / "b", progress=False)
    resumed = kernel_family(seed=1)
    onefit.train(resumed, batches(), ProgressiveShrinkingRecipe(config), epochs=3, checkpoint=tmp_path / "b",
                 progress=False)
    a, b = whole.module.state_dict(), resumed.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_releasing_the_widths_sorts_the_channels_and_their_optimizer_state_first():
    """Once-for-All's width phase: channels by importance (the full network's function unchanged),
    Adam's moments moved with their channels; without sort_width nothing is reordered."""
    from onefit.importance import L1Importance

    def first_group(family):
        group = next(g for g in family.plan.groups.values() if g.name in family.space.names)
        return [family.module.get_submodule(n) for n in group.producers]

    x = batches(1)[0][0]
    for sort_width in (True, False):
        family = kernel_family()
        recipe = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=1, sort_width=sort_width))
        optimizer = torch.optim.Adam(family.parameters(), lr=0.0)  # steps that change nothing but the order
        for _ in range(3):  # the full network, then kernel, then depth
            recipe.step(family, batches(1)[0], optimizer)
        family.eval()
        with torch.no_grad(), family.activate(family.space.max()):
            before = family(x)
        producer = first_group(family)[0]
        scores, rows = L1Importance()(first_group(family)), producer.weight.detach().clone()
        moment = optimizer.state[producer.weight]["exp_avg_sq"].clone()
        assert not torch.equal(scores, scores.sort(descending=True).values)
        recipe.step(family, batches(1)[0], optimizer)  # releases the widths (in eval mode: norm statistics stay)
        with torch.no_grad(), family.activate(family.space.max()):
            assert torch.allclose(family(x), before, atol=1e-5)
        after = L1Importance()(first_group(family))
        if sort_width:
            assert torch.allclose(after, scores.sort(descending=True).values)
        else:
            assert torch.equal(after, scores)
        # each filter's second moment went where the filter went (with lr 0 Adam only adds to it)
        order = [next(j for j in range(len(rows)) if torch.equal(producer.weight[i], rows[j])) for i in range(len(rows))]
        grown = optimizer.state[producer.weight]["exp_avg_sq"]
        assert all((grown[i] >= 0.999 * moment[j]).all() for i, j in enumerate(order))
        assert (order != sorted(order)) == sort_width


def test_each_phase_restarts_the_cosine_learning_rate():
    family = kernel_family()
    recipe = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=(2, 3, 1)))
    assert [recipe.cosine_span(family, step, 10) for step in (0, 1, 2, 4, 5, 6, 9)] == \
        [(0, 2), (1, 2), (0, 3), (2, 3), (0, 1), (0, 4), (3, 4)]
    whole = ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=(2, 3, 1), restart_lr=False))
    assert whole.cosine_span(family, 5, 10) == (5, 10)
