"""Adapters on a frozen family: nested, fused at extraction, the family untouched, one file per task."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import onefit
from onefit.adapters import AdapterError, learned_parameters_of


def cnn_family(seed: int = 0):
    torch.manual_seed(seed)
    model = onefit.zoo.resnet(in_channels=1, widths=(8, 16), blocks=(1, 1))
    return onefit.elasticize(model, (torch.randn(2, 1, 8, 8),), onefit.ElasticConfig(width=(0.5, 0.75, 1.0)))


def scramble_(adapters) -> None:
    """Adapters away from their start (B = 0 is the frozen layer), so a wrong slice shows."""
    torch.manual_seed(3)
    for delta in adapters.deltas().values():
        delta.B.data.normal_(0, 0.3)


def test_every_sub_model_extracts_with_its_adapter_fused():
    family = cnn_family()
    plain_sizes = {}
    for arch in (family.space.min(), family.space.max()):
        sub = family.extract(arch)
        plain_sizes[family.space.key(arch)] = sum(p.numel() for p in sub.parameters())
    adapters = onefit.adapt(family, ranks=(2, 4, 8))
    scramble_(adapters)
    x = torch.randn(4, 1, 8, 8)
    rng = random.Random(0)
    for arch in [family.space.min(), family.space.max()] + [family.space.sample(rng) for _ in range(4)]:
        family.eval()
        with torch.no_grad(), family.activate(arch):
            expected = family(x)
        sub = family.extract(arch).eval()
        assert not any("parametrizations" in n for n, _ in sub.named_parameters())
        assert torch.allclose(sub(x), expected, atol=1e-5), arch
    for arch in (family.space.min(), family.space.max()):  # fused: no larger than without adapters
        sub = family.extract(arch)
        plain = {k: v for k, v in arch.items() if k != "adapter:rank"}
        adapters_off = sum(p.numel() for p in sub.parameters())
        assert adapters_off == plain_sizes[json_key(plain)]


def json_key(arch) -> str:
    import json

    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


def test_a_sub_model_uses_the_prefix_of_its_adapter():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(width=(0.5, 1.0)))
    original = family.module.get_submodule("1").weight.detach().clone()
    adapters = onefit.adapt(family, ranks=(2, 4))
    scramble_(adapters)
    delta = adapters.deltas()["1"]
    arch = {**family.space.min(), "adapter:rank": 2}
    fused = family.extract(arch)[1].weight
    by_hand = original[:8] + delta.B[:8, :2] @ delta.A[:2]
    assert torch.allclose(fused, by_hand, atol=1e-6)
    assert learned_parameters_of(family, arch) == 2 * (8 + 64) + 2 * 8 + (8 * 10 + 10)  # adapter, norm, head


def test_the_family_is_untouched_by_training_and_given_back_unchanged():
    family = cnn_family()
    x = torch.randn(8, 1, 8, 8)
    family.eval()
    with torch.no_grad():
        before = family(x)
    state = {k: v.clone() for k, v in family.module.state_dict().items()}
    adapters = onefit.adapt(family, ranks=(2, 4))
    data = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(3)]
    history = onefit.train(family, data, onefit.AdapterRecipe(), epochs=1, progress=False)
    assert history and all(d.B.abs().sum() > 0 for d in adapters.deltas().values())  # they learned
    adapters.detach_()
    after = family.module.state_dict()
    assert set(after) == set(state)
    assert all(torch.equal(after[k], v) for k, v in state.items()), "weights or batch-norm statistics changed"
    family.eval()
    with torch.no_grad():
        assert torch.equal(family(x), before)
    assert "adapter:rank" not in family.space.names


def test_adapters_save_and_load_onto_their_own_family_only(tmp_path):
    family = cnn_family()
    adapters = onefit.adapt(family, ranks=(2, 4), classes=5)
    scramble_(adapters)
    x = torch.randn(3, 1, 8, 8)
    family.eval()
    arch = {**family.space.min(), "adapter:rank": 2}
    with torch.no_grad(), family.activate(arch):
        expected = family(x)
    path = adapters.save(tmp_path / "task.safetensors")
    assert expected.shape == (3, 5)
    adapters.detach_()
    with torch.no_grad():
        assert family(x).shape == (3, 10)  # the family's own head is back
    loaded = onefit.load_adapters(family, path)
    assert loaded.learned_parameters() == adapters.learned_parameters()
    with torch.no_grad(), family.activate(arch):
        assert torch.equal(family(x), expected)
    loaded.detach_()
    with pytest.raises(AdapterError, match="trained on another family"):
        onefit.load_adapters(cnn_family(seed=1), path)
    (tmp_path / "other.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="not a readable adapter file"):
        onefit.load_adapters(family, tmp_path / "other.safetensors")


def test_ranks_a_layer_cannot_take_are_refused():
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
    with pytest.raises(AdapterError, match=r"rank 32 is too large for layer '1': its update is 16 x 64, so at most rank 16"):
        onefit.adapt(family, ranks=(32,), layers=["1"])
    with pytest.raises(AdapterError, match="no layer can take an adapter of rank 99"):
        onefit.adapt(family, ranks=(99,))
    with pytest.raises(AdapterError, match="ranks must be positive"):
        onefit.adapt(family, ranks=(0, 2))
    adapters = onefit.adapt(family, ranks=(4,))
    with pytest.raises(AdapterError, match="already has adapters"):
        onefit.adapt(family)
    with pytest.raises(ValueError, match=r"save them with adapters.save\(path\)"):
        family.save("/nonexistent/family")
    adapters.detach_()
    with pytest.raises(ValueError, match="attach them first"):
        onefit.AdapterRecipe().prepare(family)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence")
def test_a_convolution_adapter_is_splora_s():
    """The authors' structured-pruning-adapters package as the reference: its SPLoRAConv2d with
    the same factors has the weight onefit fuses."""
    from sp_adapters.splora import SPLoRAConv2d

    family = cnn_family()
    adapters = onefit.adapt(family, ranks=(4,))
    scramble_(adapters)
    name = next(n for n in adapters.layers if isinstance(family.module.get_submodule(n), onefit.elastic.ElasticConv))
    delta = adapters.deltas()[name]
    conv = family.extract(family.space.max()).get_submodule(name)
    reference = SPLoRAConv2d.from_module(nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                                   padding=conv.padding, bias=conv.bias is not None), rank=4)
    with torch.no_grad():
        reference.weight.copy_(family.module.get_submodule(name).parametrizations.weight.original)
        reference.adapter.rows.copy_(delta.A[None])
        reference.adapter.cols.copy_(delta.B[None])
    assert torch.allclose(conv.weight, reference.adapted_weight, atol=1e-6)
