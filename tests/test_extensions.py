"""Extending onefit from your own code, with no edit to onefit: an elastic version of a layer type
of your own, a dimension kind of your own and a recipe of your own. A family built from a model
using that layer trains, searches, extracts exactly, saves and loads, and ``inspect`` shows it."""

import random
from dataclasses import dataclass, field

import torch
from torch import nn

import onefit
from onefit.dims import Kind, register_kind
from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register
from onefit.search import RandomSearch, family_problem, search
from onefit.space import Dimension
from onefit.tasks import ClassificationTask, first_output
from onefit.train import Recipe, register_recipe


class Dense(nn.Module):
    """A layer type of the user's own: y = x W^T + b, W of shape (out, in)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return x @ self.weight.T + self.bias


@register(Dense)
class ElasticDense(ElasticLayer, nn.Module):
    """Its elastic version: the first ``active_out`` outputs of however many inputs arrive, and
    (for the toy kind below) the bias switched off by ``active_bias = 0``."""

    coupling = "linear"  # reads the last axis, produces a new channel group there
    active_out = None
    active_bias = 1

    @classmethod
    def plain_sizes(cls, plain):
        return plain.weight.shape[1], plain.weight.shape[0]

    @classmethod
    def from_plain(cls, plain: Dense) -> "ElasticDense":
        layer = cls()
        layer.weight, layer.bias = plain.weight, plain.bias
        return layer

    def forward(self, x):
        out = self.weight.shape[0] if self.active_out is None else self.active_out
        return x @ self.weight[:out, : x.shape[-1]].T + self.bias[:out] * self.active_bias

    def to_plain(self, n_in: int, n_out: int) -> Dense:
        plain = Dense(n_in, n_out)
        with torch.no_grad():
            plain.weight.copy_(self.weight[:n_out, :n_in])
            plain.bias.copy_(self.bias[:n_out])
        return plain


@register_kind
class BiasKind(Kind):
    """A toy dimension kind: ``bias:<layer>`` in (0, 1), whether each Dense layer adds its bias."""

    names = ("bias",)

    def layers(self, family):
        return [n for n in family.plan.layers if isinstance(family.module.get_submodule(n), ElasticDense)]

    def dimensions(self, family):  # its choices from the config's options for this kind
        return [Dimension(f"bias:{n}", "bias", tuple(family.config.option("bias", (0, 1)))) for n in self.layers(family)]

    def settings(self, family, arch):
        return [(family.module.get_submodule(n), "active_bias", arch[f"bias:{n}"])
                for n in self.layers(family) if f"bias:{n}" in arch]

    def idle(self, family, arch, gone):
        return {f"bias:{n}" for n in self.layers(family) if gone(n)}

    def extract_layer(self, family, name, plain, arch):
        if arch.get(f"bias:{name}") == 0:
            with torch.no_grad():
                plain.bias.zero_()
        return plain

    def cost_(self, family, arch, rows):
        for n in self.layers(family):
            if arch.get(f"bias:{n}") == 0 and n in rows:
                rows[n]["params"] -= rows[n]["n_out"]
                rows[n]["bytes"] = 4 * rows[n]["params"]

    def columns(self, family, name):
        dim = f"bias:{name}"
        return {"bias": (f"{dim} {family.space[dim].choices}", True)} if dim in family.space.names else {}


@dataclass(frozen=True)
class EndsConfig:
    seed: int = 0
    smallest_weight: float = 0.3  # share of the smallest sub-model's loss in a step


@register_recipe
@dataclass
class EndsRecipe(Recipe):
    """A toy recipe: each step trains the largest and the smallest sub-model, weighted."""

    name = "ends"
    config_type = EndsConfig
    config: EndsConfig = field(default_factory=EndsConfig)

    def __post_init__(self):
        self.rng = random.Random(self.config.seed)

    def step(self, family, batch, optimizer, teacher=None, task=None):
        task = task or ClassificationTask()
        optimizer.zero_grad(set_to_none=True)
        losses = []
        for arch, weight in ((family.space.max(), 1 - self.config.smallest_weight),
                             (family.space.min(), self.config.smallest_weight)):
            with family.activate(arch):
                loss = task.loss(first_output(family(*task.inputs(batch))), batch)
            (weight * loss).backward()
            losses.append(loss.item())
        optimizer.step()
        return {"loss_largest": losses[0], "loss_mean": sum(losses) / 2}


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), Dense(64, 32), nn.ReLU(), Dense(32, 32), nn.ReLU(), Dense(32, 10))


def test_a_family_of_a_custom_layer_with_a_custom_kind_and_recipe(tmp_path):
    from onefit.data import digits

    train_data, test_data = digits(batch_size=64)
    example = (torch.rand(2, 1, 8, 8),)
    config = onefit.ElasticConfig(width=(0.5, 1.0), options={"bias": [0, 1]})
    family = onefit.elasticize(build(), example, config)
    assert {d.kind for d in family.space} == {"width", "bias"}
    fixed = onefit.elasticize(build(), example, onefit.ElasticConfig(width=(0.5, 1.0), options={"bias": [1]}))
    assert {d.kind for d in fixed.space} == {"width"}  # one choice: no dimension
    assert [d.name for d in family.space if d.kind == "bias"] == ["bias:1", "bias:3", "bias:5"]

    report = onefit.inspect(build(), example, onefit.ElasticConfig(width=(0.5, 1.0)))
    row = next(r for r in report.layers if r.name == "1")
    assert row.type == "Dense" and row.width_out == "width:1" and row.columns["bias"] == "bias:1 (0, 1)"
    assert "bias" in report.to_markdown().splitlines()[0]

    before = onefit.evaluate(family, test_data)
    history = onefit.train(family, train_data, EndsRecipe(), epochs=3, progress=False)
    assert history[-1]["recipe"] == "ends" and onefit.evaluate(family, test_data) > before + 30

    x = torch.rand(5, 1, 8, 8)
    rng = random.Random(0)
    for arch in [family.space.min(), family.space.max()] + [family.space.sample(rng) for _ in range(5)]:
        sub = family.extract(arch)
        assert not any(isinstance(m, (ElasticDense, ElasticLayer)) for m in sub.modules())
        with torch.no_grad(), family.activate(arch):
            assert torch.allclose(sub(x), family(x), atol=1e-6)
        costs = onefit.costs(family, arch)
        assert costs["params"] == sum(p.numel() for p in sub.parameters()) - sum(
            arch[f"bias:{n}"] == 0 and sub.get_submodule(n).bias.numel() for n in ("1", "3", "5"))
    with torch.no_grad(), family.activate(family.space.max()):
        original = build()
        original.load_state_dict(family.module.state_dict())
        assert torch.allclose(family(x), original(x), atol=1e-6)  # the largest arch is the trained model

    val = list(test_data)[:2]
    problem = family_problem(family, val, calibration=val, objectives=("error", "params"))
    front = search(problem, RandomSearch(seed=0), budget=6, progress=False)
    assert len(front.evaluated) == 6 and all(set(t.arch) == set(family.space.names) for t in front.evaluated)

    family.save(tmp_path / "fam")
    loaded = onefit.load(tmp_path / "fam", model=build())  # the options come back from the manifest
    assert loaded.space == family.space and loaded.history == family.history
    arch = family.space.sample(rng)
    with torch.no_grad(), family.activate(arch), loaded.activate(arch):
        assert torch.equal(family(x), loaded(x))
