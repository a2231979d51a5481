"""Contract checks every convertible model must pass, plus the family's own behaviour."""

import random

import pytest
import torch
from torch import nn

import onefit
from onefit.graph.coupling import TraceError


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_largest_arch_equals_the_original(zoo_case):
    name, model, x = zoo_case
    family = onefit.elasticize(model, (x,)).eval()
    assert len(family.space) >= 1, name
    with torch.no_grad():
        expected = model(x)
        with family.activate(family.space.max()):
            assert rel_err(family(x), expected) <= 1e-5
        assert rel_err(family.extract(family.space.max())(x), expected) <= 1e-5


def test_extract_equals_the_elastic_forward_and_is_smaller(zoo_case):
    name, model, x = zoo_case
    family = onefit.elasticize(model, (x,)).eval()
    rng = random.Random(0)
    archs = [family.space.min()] + [family.space.sample(rng) for _ in range(3)]
    for arch in archs:
        if arch == family.space.max():
            continue
        with torch.no_grad(), family.activate(arch):
            elastic = family(x)
        sub = family.extract(arch).eval()
        with torch.no_grad():
            assert (sub(x) - elastic).abs().max().item() <= 1e-5, (name, arch)
        assert n_params(sub) < n_params(model), (name, arch)
        assert not [type(m) for m in sub.modules() if type(m).__module__.startswith("onefit.elastic")]


def test_archs_with_the_same_canonical_form_are_the_same_sub_model(zoo_case):
    name, model, x = zoo_case
    family = onefit.elasticize(model, (x,)).eval()
    rng = random.Random(0)
    for arch in [family.space.min()] + [family.space.sample(rng) for _ in range(3)]:
        canonical = family.canonical(arch)
        assert family.canonical(canonical) == canonical
        assert {k for k in arch if arch[k] != canonical[k]} <= family.idle(arch)
        with torch.no_grad():
            assert torch.equal(family.extract(arch)(x), family.extract(canonical)(x)), (name, arch)
        assert onefit.costs(family, arch) == onefit.costs(family, canonical), (name, arch)


def test_the_smallest_sub_model_really_shrinks(zoo_case):
    name, model, x = zoo_case
    family = onefit.elasticize(model, (x,))
    assert onefit.count_params(family, family.space.min()) < 0.6 * n_params(model), name


def test_elasticize_leaves_the_model_alone():
    model = onefit.zoo.mlp(hidden=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    family = onefit.elasticize(model, (torch.randn(2, 1, 8, 8),))
    with torch.no_grad():
        for p in family.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(type(m).__module__.startswith("torch") for m in model.modules() if m is not model)


def test_activate_restores_the_previous_arch():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16), (torch.randn(2, 1, 8, 8),))
    x = torch.randn(3, 1, 8, 8)
    small, smaller = family.space.max(), family.space.min()
    small = {k: family.space[k].choices[1] for k in small}
    with torch.no_grad(), family.activate(small):
        inside = family(x)
        with family.activate(smaller):
            family(x)
        assert torch.equal(family(x), inside)
    with torch.no_grad():
        assert torch.equal(family(x), family.module(x))
        with pytest.raises(RuntimeError), family.activate(smaller):
            raise RuntimeError("boom")
        with family.activate(family.space.max()):
            full = family(x)
        assert torch.equal(family(x), full)


def test_activate_rejects_archs_outside_the_space():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16), (torch.randn(2, 1, 8, 8),))
    with pytest.raises(onefit.ArchError, match="allowed values"):
        with family.activate({"width:1": 5}):
            pass
    with pytest.raises(onefit.ArchError, match="unknown dimension"):
        family.extract({"depth:nowhere": 1})


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.rnn = nn.GRU(8, 8, batch_first=True)
        self.fc2 = nn.Linear(8, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        y, _ = self.rnn(self.fc(x))
        return self.out(torch.relu(self.fc2(y[:, -1])))


def test_unsupported_layers_are_kept_whole_with_a_reason():
    model = WithLSTM().eval()
    x = torch.randn(2, 5, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:fc2"]  # the GRU's input width is frozen; fc2 is free
    assert "no elastic version of GRU" in family.plan.layers["rnn"].reason
    frozen = family.plan.group_of("fc")
    assert frozen.frozen and "GRU" in frozen.frozen
    sub = family.extract(family.space.min())
    with torch.no_grad():
        with family.activate(family.space.min()):
            assert torch.allclose(sub(x), family(x), atol=1e-6)


def test_nothing_to_shrink_is_a_clear_error():
    with pytest.raises(ValueError, match="nothing onefit can shrink"):
        onefit.elasticize(nn.Sequential(nn.Linear(4, 3)), (torch.randn(1, 4),))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow cannot be traced
            return self.fc(x)
        return x


def test_untraceable_model_and_wrong_inputs_are_clear_errors():
    with pytest.raises(TraceError, match="cannot trace Branchy"):
        onefit.elasticize(Branchy(), (torch.randn(1, 4),))
    with pytest.raises(TraceError, match=r"fails on example inputs of shape \[\(2, 5\)\]"):
        onefit.elasticize(onefit.zoo.mlp(in_features=64), (torch.randn(2, 5),))
    with pytest.raises(TypeError, match="nn.Module"):
        onefit.elasticize("model", (torch.randn(1, 4),))
    with pytest.raises(ValueError, match=r"fractions must lie in \(0, 1\]"):
        onefit.ElasticConfig(width=(0.0, 1.5))


def test_config_sets_width_choices():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=40), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(width=(0.5,), depth=False))
    assert all(d.choices == (20, 40) for d in family.space)


def test_per_layer_overrides_and_patterns_that_match_nothing(tmp_path):
    model, source = onefit.zoo.build("resnet", widths=[8, 16], blocks=[2, 2])
    config = onefit.ElasticConfig(width=(0.5, 1.0), layers={"stages.1.*": (0.25, 1.0), "stem.*": (1.0,)})
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),), config)
    assert "width:stem.0" not in family.space.names  # kept whole by the override
    assert family.space["width:stages.1.0.conv1"].choices == (4, 16)
    assert family.space["width:stages.0.0.conv1"].choices == (4, 8)
    family.source = source
    family.save(tmp_path / "f")
    assert onefit.load(tmp_path / "f").space == family.space  # the overrides survive JSON
    with pytest.raises(ValueError, match=r"pattern 'stages\.9\.\*' matches no layer"):
        onefit.elasticize(model, (torch.randn(1, 1, 8, 8),), onefit.ElasticConfig(layers={"stages.9.*": (0.5,)}))
    with pytest.raises(ValueError, match=r"ElasticConfig.layers\['head'\]: width fractions must lie in \(0, 1\]"):
        onefit.ElasticConfig(layers={"head": (2.0,)})


def test_extraction_keeps_each_module_in_its_mode():
    family = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
    for mode in (False, True):
        family.train(mode)
        sub = family.extract(family.space.min())
        assert {m.training for m in sub.modules()} == {mode}


def test_choices_per_dimension_kind():
    model = onefit.zoo.vit(dim=32, heads=4, depth=4)
    config = onefit.ElasticConfig(width=(0.5, 1.0), heads=(0.25, 1.0), depth=(2, 3, 9))
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),), config)
    assert family.space["heads:blocks.0.attn.q"].choices == (1, 4)
    assert family.space["width:blocks.0.mlp.0"].choices == (32, 64)
    assert family.space["depth:blocks"].choices == (2, 3, 4)  # 9 is more than the stage has; all 4 always
    assert "depth:blocks" not in onefit.elasticize(model, (torch.randn(1, 1, 8, 8),),
                                                   onefit.ElasticConfig(depth=False)).space.names
    with pytest.raises(ValueError, match="ElasticConfig.depth"):
        onefit.ElasticConfig(depth=(0,))


def test_a_concatenation_shrinks_part_by_part_and_keeps_its_statistics():
    from conftest import DenseNet

    torch.manual_seed(0)
    family = onefit.elasticize(DenseNet(), (torch.randn(2, 1, 8, 8),))
    arch = {"width:stem": 4, "width:conv1": 3, "width:conv2": 6}
    bn3 = family.module.bn3
    before = bn3.running_mean.clone()
    family.train()
    with family.activate(arch):
        family(torch.randn(8, 1, 8, 8))
    kept = torch.cat([torch.arange(0, 4), torch.arange(8, 11), torch.arange(14, 20)])  # stem | conv1 | conv2
    changed = (bn3.running_mean != before).nonzero().flatten()
    assert torch.equal(changed, kept)  # only the channels this sub-model uses were updated
    family.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(family.extract(arch)(x), family(x), atol=1e-6)
    assert family.extract(arch).fc.in_features == 13


def test_multihead_attention_shrinks_by_heads_sequence_first_too_and_refuses_masks_it_was_traced_without():
    from conftest import MHAEncoder

    torch.manual_seed(0)
    model = MHAEncoder(batch_first=False).eval()
    x = torch.randn(5, 3, 6)  # (T, B, features)
    family = onefit.elasticize(model, (x,)).eval()
    arch = {"heads:attn": 2}
    with torch.no_grad(), family.activate(arch):
        elastic = family(x)
    sub = family.extract(arch)
    with torch.no_grad():
        assert torch.allclose(sub(x), elastic, atol=1e-6)
        assert torch.allclose(family(x), model(x), atol=1e-5)
    assert sub.attn.q_proj.out_features == 8  # 2 heads of 4
    h = torch.randn(5, 3, 16)
    with pytest.raises(TypeError, match="attn_mask"):  # traced without a mask, it takes none
        sub.attn(h, h, h, attn_mask=torch.zeros(5, 5))


class MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 16)
        self.out = nn.Linear(16, 2)
        self.register_buffer("causal", torch.triu(torch.ones(4, 4, dtype=torch.bool), 1))

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.attn(x, x, x, attn_mask=self.causal)[0])))


def test_attention_under_a_causal_mask_held_as_a_buffer_shrinks_by_heads():
    torch.manual_seed(0)
    model, x = MaskedAttention().eval(), torch.randn(3, 4, 8)
    family = onefit.elasticize(model, (x[:1],))
    assert "heads:attn" in family.space.names and "width:fc" in family.space.names
    with torch.no_grad():
        assert torch.allclose(family(x), model(x), atol=1e-5)
        with family.activate(family.space.min()):
            elastic = family(x)
        assert torch.allclose(family.extract(family.space.min())(x), elastic, atol=1e-6)
