"""Rank as an elastic dimension: factorized layers, SVD start, counts, recipes, search."""

import doctest
import math
import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onefit
from onefit.elastic import lowrank
from onefit.elastic.lowrank import ElasticLowRankConv, ElasticLowRankLinear
from onefit.train import OrderedRankConfig, OrderedRankRecipe, SandwichSampler, TRPConfig, TRPRecipe
from onefit.train import ordered_rank, trp
from onefit.train.loop import set_cosine_lr
from conftest import DepthwiseNet


def conv_mlp() -> nn.Module:
    """Two convolutions, a flatten into a Linear, and a head: every layer kind rank applies to."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def rank_family(seed: int = 0, **config) -> tuple[onefit.Family, nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model, x = conv_mlp(), torch.randn(4, 1, 8, 8)
    return onefit.elasticize(model, (x,), onefit.ElasticConfig(**{"rank": (0.25, 0.5), **config})), model, x


@pytest.mark.parametrize("module", [lowrank, ordered_rank, trp])
def test_the_module_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dense", [nn.Linear(24, 16), nn.Conv2d(6, 10, 3, padding=1)])
def test_svd_start_is_exact_at_full_rank_and_best_at_every_rank(dense):
    torch.manual_seed(0)
    kind = ElasticLowRankLinear if isinstance(dense, nn.Linear) else ElasticLowRankConv
    layer = kind.from_dense(onefit.elastic.to_elastic(dense), choices=(1, 2, 4))
    x = torch.randn(3, 24) if isinstance(dense, nn.Linear) else torch.randn(3, 6, 5, 5)
    with torch.no_grad():
        assert torch.allclose(layer(x), dense(x), atol=1e-5)
    matrix = dense.weight.detach().flatten(1)
    s = torch.linalg.svdvals(matrix)
    for r in range(1, layer.full_rank + 1):  # Eckart-Young: the best rank-r error is the tail of s
        error = (layer.dense_weight(r=r).detach().flatten(1) - matrix).norm()
        assert error == pytest.approx(s[r:].norm().item(), abs=1e-4)


def test_extract_equals_the_elastic_forward_with_width_and_counts_match():
    family, model, x = rank_family()
    onefit.sort_(family)  # permuting a width group must move U's rows and V's columns together
    kinds = {d.name: d.kind for d in family.space}
    assert {"rank:0", "rank:2", "rank:5", "rank:7"} <= set(kinds) and "width:5" in kinds
    with torch.no_grad():
        assert torch.allclose(family.extract(family.space.max())(x), model(x), atol=1e-5)
    rng = random.Random(0)
    for arch in [family.space.min(), family.space.max()] + [family.space.sample(rng) for _ in range(6)]:
        sub = family.extract(arch).eval()
        assert not [m for m in sub.modules() if type(m).__module__.startswith("onefit")]
        with torch.no_grad(), family.activate(arch):
            assert torch.allclose(sub(x), family(x), atol=1e-5), arch
        counted = onefit.costs(family, arch)
        assert counted["params"] == sum(p.numel() for p in sub.parameters()), arch
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            sub(x[:1])
        assert counted["macs"] == flops.get_total_flops() // 2, arch
    small = family.extract({"rank:5": 16})[5]  # rank 16 of 512 -> 64: two Linear layers
    assert [tuple(m.weight.shape) for m in small] == [(16, 512), (64, 16)]
    assert isinstance(family.extract(family.space.max())[5], nn.Linear)  # full rank: the dense layer is cheaper


def test_a_factorized_family_saves_and_loads(tmp_path):
    family, _, x = rank_family()
    ordered_rank.restrict_rank_(family, "rank:5", 20)  # as progressive shrinking leaves it: 20 needs 32
    family.save(tmp_path / "f")
    loaded = onefit.saved.restore_(rank_family(seed=1)[0], tmp_path / "f")
    assert loaded.space["rank:5"].choices == (16, 32)
    arch = loaded.space.min()
    with torch.no_grad():
        assert torch.allclose(loaded.extract(arch)(x), family.extract(arch)(x))
    other = rank_family(seed=1)[0]
    other.module.register_buffer("extra", torch.zeros(1))  # the weights no longer fit
    with pytest.raises(onefit.checkpoint.CheckpointError, match="weights do not fit"):
        onefit.saved.restore_(other, tmp_path / "f")
    assert other.space["rank:5"].choices == (16, 32, 64)  # a failed restore leaves the space alone
    family.space = onefit.Space([onefit.space.Dimension(d.name, d.kind, (16, 20)) if d.name == "rank:5" else d
                                 for d in family.space])  # not a cap of the config's choices
    family.save(tmp_path / "g")
    with pytest.raises(onefit.checkpoint.CheckpointError, match="does not rebuild the saved space"):
        onefit.saved.restore_(rank_family(seed=1)[0], tmp_path / "g")


def test_bad_ranks_are_refused_with_clear_messages():
    with pytest.raises(ValueError, match=r"ElasticConfig.rank: rank fractions must lie in \(0, 1\], got \[1.5\]"):
        onefit.ElasticConfig(rank=(1.5,))
    with pytest.raises(ValueError, match=r"ElasticConfig.rank: a tuple of fractions in \(0, 1\], got 0.5"):
        onefit.ElasticConfig(rank=0.5)
    with pytest.raises(ValueError, match=r"rank_layers\['a'\]: a tuple of fractions in \(0, 1\], got 0.5"):
        onefit.ElasticConfig(rank_layers={"a": 0.5})
    with pytest.raises(ValueError, match=r"rank_layers: pattern 'nope\*' matches no layer"):
        rank_family(rank_layers={"nope*": (0.5,)})
    with pytest.raises(ValueError, match=r"rank_layers: pattern '1' matches no layer"):  # a norm: nothing to factorize
        model = nn.Sequential(nn.Linear(8, 64), nn.LayerNorm(64), nn.Linear(64, 10))
        onefit.elasticize(model, (torch.randn(2, 8),), onefit.ElasticConfig(rank_layers={"1": (0.5,)}))
    family, _, x = rank_family()
    with pytest.raises(onefit.ArchError, match=r"'rank:5' \(rank\): value 999 is not allowed; allowed values are \[16, 32, 64\]"):
        family.extract({"rank:5": 999})
    layer = family.module.get_submodule("5")
    layer.active_rank = 65
    with pytest.raises(ValueError, match=r"rank 65 is outside 1..64, the full rank"):
        layer(torch.randn(2, 512))


def test_layers_too_small_to_factorize_stay_dense_with_the_reason_in_inspect():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(2, 8)
    config = onefit.ElasticConfig(rank=(0.5,), rank_layers={"4": (1.0,)})
    report = onefit.inspect(model, (x,), config)
    rows = {row.name: row for row in report.layers}
    assert rows["0"].rank == "too small to factorize profitably: rank 4 takes 64 weights, dense 64"
    assert rows["2"].rank == "rank:2 (4, 8)" and rows["2"].params == 8 * 64 + 64
    assert rows["4"].rank == "one rank choice only (the full rank)"
    assert "| rank |" in report.to_markdown()
    family = onefit.elasticize(model, (x,), config)
    assert isinstance(family.module.get_submodule("0"), onefit.elastic.ElasticLinear)
    depthwise = onefit.elasticize(DepthwiseNet(), (torch.randn(1, 3, 8, 8),), onefit.ElasticConfig(rank=(0.25,)))
    assert depthwise.rank_notes["dw"].startswith("grouped or depthwise convolution")
    assert "rank:project" in depthwise.space.names


def test_no_rank_setting_changes_nothing():
    torch.manual_seed(0)
    family = onefit.elasticize(conv_mlp(), (torch.randn(1, 1, 8, 8),))
    assert not family.factorized and not family.rank_notes
    assert not [d for d in family.space if d.kind == "rank"]


def tiny_data(n_batches: int = 3):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(n_batches)]


def test_ordered_rank_recipe_trains_and_shrinks_the_space():
    family, _, _ = rank_family()
    recipe = OrderedRankRecipe(OrderedRankConfig(group_lasso=1e-3, shrink_every=3, seed=0))
    history = onefit.train(family, tiny_data(), recipe, epochs=1, progress=False)
    assert math.isfinite(history[-1]["loss_mean"]) and history[-1]["recipe"] == "ordered_rank"
    optimizer = torch.optim.Adam(family.parameters(), lr=1e-3)
    recipe.step(family, tiny_data()[0], optimizer)  # the optimizer has moments for every component
    layer = family.module.get_submodule("5")
    with torch.no_grad():  # the tail components vanish: shrinking drops the choices above them
        layer.u[:, 30:] = 0
    assert recipe.shrink_(family, optimizer)["rank:5"] == 30
    assert family.space["rank:5"].choices == (16, 32)  # the choices stay those of the config
    recipe.step(family, tiny_data()[1], optimizer)
    assert not layer.u[:, 32:].any() and not layer.v[32:].any()  # past the cap: zero, and they stay zero
    x = tiny_data()[0][0]
    with torch.no_grad():
        assert torch.allclose(family.eval()(x), family.extract(family.space.max())(x), atol=1e-5)
    with pytest.raises(ValueError, match="OrderedRankConfig.shrink_threshold"):
        OrderedRankConfig(shrink_threshold=1.0)


def test_trp_truncates_to_the_energy_and_leaves_ordered_svd_factors():
    family, _, x = rank_family()
    recipe = TRPRecipe(TRPConfig(energy=0.6, period=2, nuclear=1e-3))
    history = onefit.train(family, tiny_data(4), recipe, epochs=1, progress=False)
    assert math.isfinite(history[-1]["loss_largest"])
    assert family.space["rank:5"].choices[-1] < 64  # 60% of the energy needs fewer than all components
    layer = family.module.get_submodule("5")
    r = family.space["rank:5"].choices[-1]
    assert recipe.ranks["rank:5"] == r
    w = layer.dense_weight(r=r).detach().flatten(1)
    s = torch.linalg.svdvals(w)
    norms = layer.component_norms()[:r]
    assert torch.allclose(norms, s[:r], rtol=1e-3, atol=1e-5)  # balanced factors, ordered by singular value
    with pytest.raises(ValueError, match=r"TRPConfig.energy must lie in \(0, 1\]"):
        TRPConfig(energy=0.0)


@pytest.mark.parametrize("recipe", [OrderedRankRecipe(), TRPRecipe()], ids=["ordered_rank", "trp"])
def test_rank_recipes_refuse_a_family_without_rank_dimensions(recipe):
    family, _, _ = rank_family(rank=None)
    name = type(recipe).__name__
    with pytest.raises(ValueError, match=rf"{name} needs rank dimensions; set ElasticConfig\(rank=\.\.\.\) or rank_layers"):
        onefit.train(family, tiny_data(1), recipe, epochs=1, progress=False)


@pytest.mark.parametrize("make", [
    lambda: OrderedRankRecipe(OrderedRankConfig(shrink_every=3, shrink_threshold=0.6)),
    lambda: TRPRecipe(TRPConfig(energy=0.9, period=3)),
], ids=["ordered_rank", "trp"])
def test_a_resumed_rank_run_equals_an_uninterrupted_one(tmp_path, make):
    """5 batches an epoch, shrinking or truncating every 3 steps: a resumed run must keep counting steps.
    (No cosine schedule: one over the first run's single epoch would differ from one over two.)"""
    data, options = tiny_data(5), {"cosine": False, "progress": False}
    whole, recipe = rank_family()[0], make()
    onefit.train(whole, data, recipe, epochs=2, **options)
    onefit.train(rank_family()[0], data, make(), epochs=1, checkpoint=tmp_path, **options)
    resumed, again = rank_family()[0], make()
    onefit.train(resumed, data, again, epochs=2, checkpoint=tmp_path, **options)
    assert again.steps == recipe.steps == 10
    assert again.state_dict() == recipe.state_dict() and again.describe() == recipe.describe()
    assert resumed.space == whole.space != rank_family()[0].space  # capped, in the same way
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_rank_dimensions_are_searched():
    family, _, _ = rank_family(width=(1.0,))
    data = tiny_data(2)
    problem = onefit.family_problem(family, data, objectives=("error", "macs"))
    assert {d.kind for d in problem.space} == {"rank"}
    front = onefit.search(problem, onefit.RandomSearch(seed=0), budget=5)
    assert front.trials and all(any(k.startswith("rank:") for k in t.arch) for t in front.trials)


def test_ordered_rank_training_recovers_the_svd():
    """Maestro, Theorem 3.1: a random linear map, inputs uniform (isotropic), nested ranks => at
    every rank b the learned prefix is within 5% of the best rank-b approximation (Eckart-Young)."""
    torch.manual_seed(0)
    d_in, d_out = 10, 8
    target = torch.randn(d_out, d_in) / 2
    s = torch.linalg.svdvals(target)
    config = onefit.ElasticConfig(rank=tuple(b / d_out for b in range(1, d_out + 1)))
    family = onefit.elasticize(nn.Sequential(nn.Linear(d_in, d_out, bias=False)), (torch.rand(2, d_in),), config)
    # no group lasso: it shrinks the components (a biased estimator), the theorem is about nesting alone
    from onefit.tasks import Task

    class SquaredError(Task):  # a task of the test's own: regression onto (x, x A^T)
        name = "squared_error"

        def inputs(self, batch):
            return (batch[0],)

        def loss(self, out, batch):
            return (out - batch[1]).pow(2).sum(-1).mean()

    recipe = OrderedRankRecipe(OrderedRankConfig(group_lasso=0.0, shrink_every=0, distill="none"),
                               SandwichSampler(n_random=6))
    optimizer = torch.optim.SGD(family.parameters(), lr=0.2, momentum=0.9)
    steps, threads = 400, torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        for i in range(steps):
            set_cosine_lr(optimizer, i, steps)
            x = torch.rand(256, d_in) * 2 - 1  # uniform on [-1, 1]^d: covariance I/3
            recipe.step(family, (x, x @ target.T), optimizer, task=SquaredError())
    finally:
        torch.set_num_threads(threads)
    layer = family.module.get_submodule("0")
    for b in range(1, d_out):
        error = (layer.dense_weight(r=b).detach() - target).norm()
        assert error <= 1.05 * s[b:].norm(), (b, error.item(), s[b:].norm().item())
    assert (layer.dense_weight().detach() - target).norm() <= 0.01 * target.norm()
