"""Bit-width as an elastic dimension: fake quantization, its extraction, its costs and its training."""

import doctest
import math
import random

import pytest
import torch
from torch import nn

import onefit
from onefit.elastic import quant
from onefit.elastic.quant import CalibrationError, calibrate_, fake_quantize_weight, quantize_values
from onefit.train import SortedNetConfig, SortedNetRecipe
from conftest import DepthwiseNet, MHAEncoder, randomize_norms

LOW_BITS = (2, 3, 4, 8)


def mixed_arch(family, seed: int = 0) -> dict:
    """A sub-model with random widths and every bits dimension below 32 (so all of them quantize)."""
    rng = random.Random(seed)
    arch = family.space.sample(rng)
    return {k: rng.choice(family.space[k].choices[:-1]) if k.startswith("bits:") else v for k, v in arch.items()}


def test_the_module_examples_run():
    result = doctest.testmod(quant)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("bits", LOW_BITS)
def test_weight_error_is_at_most_half_a_step_per_channel(bits):
    torch.manual_seed(bits)
    w = torch.randn(16, 3, 3, 3) * torch.rand(16, 1, 1, 1) * 4  # channels of very different ranges
    scale = w.abs().amax((1, 2, 3), keepdim=True) / (2 ** (bits - 1) - 1)  # the spec, not the code's helper
    error = (w - fake_quantize_weight(w, bits)).abs()
    assert (error <= scale / 2 * (1 + 1e-5)).all()
    assert error.max() > 0


@pytest.mark.parametrize("bits", LOW_BITS)
def test_at_most_two_to_the_b_minus_one_levels_per_channel(bits):
    torch.manual_seed(0)
    w = torch.rand(4, 4096) * 2 - 1
    q = quantize_values(w, bits)
    levels = [len(torch.unique(row)) for row in q]
    assert max(levels) <= 2**bits - 1
    if bits <= 4:  # 4096 uniform samples hit every level
        assert levels == [2**bits - 1] * 4
    assert torch.equal(quantize_values(torch.zeros(2, 3), bits), torch.zeros(2, 3))  # no division by zero


def test_full_precision_is_the_identity_and_columns_quantize_along_their_axis():
    w = torch.randn(5, 7)
    assert fake_quantize_weight(w, 32) is w and fake_quantize_weight(w, None) is w
    assert torch.equal(quantize_values(w.T, 3, axis=1), quantize_values(w, 3).T)


def test_the_straight_through_gradient_is_the_identity():
    torch.manual_seed(0)
    w = torch.randn(8, 6, requires_grad=True)
    upstream = torch.randn(8, 6)
    (fake_quantize_weight(w, 2) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


def test_bad_bit_widths_are_refused_naming_the_allowed_set():
    with pytest.raises(ValueError, match=r"ElasticConfig.bits: bit-width must be one of \(2, 3, 4, 8, 32\), got 5"):
        onefit.ElasticConfig(bits=(4, 5))
    with pytest.raises(ValueError, match=r"bits_layers\['fc'\].*got 16"):
        onefit.ElasticConfig(bits_layers={"fc": (16,)})
    with pytest.raises(ValueError, match="one of"):
        fake_quantize_weight(torch.randn(2, 2), 6)
    with pytest.raises(ValueError, match="activation_bits"):
        onefit.ElasticConfig(bits=(8,), activation_bits=32)
    with pytest.raises(ValueError, match="set bits or bits_layers"):
        onefit.ElasticConfig(activation_bits=8)
    with pytest.raises(ValueError, match=r"bits_layers: pattern 'bn\*' matches no layer"):
        onefit.elasticize(DepthwiseNet(), (torch.randn(1, 3, 8, 8),), onefit.ElasticConfig(bits_layers={"bn*": (8,)}))


def test_bits_dimensions_exist_only_when_configured():
    x = torch.randn(2, 5, 6)
    plain = onefit.elasticize(MHAEncoder(), (x,))
    assert not [d for d in plain.space if d.kind == "bits"]
    config = onefit.ElasticConfig(bits=(8, 4), bits_layers={"head": (32,), "mlp.*": (2,)})
    family = onefit.elasticize(MHAEncoder(), (x,), config)
    bits = {d.name: d.choices for d in family.space if d.kind == "bits"}
    # the attention keeps full precision; "head" is kept whole by its override
    assert bits == {"bits:embed": (4, 8, 32), "bits:mlp.0": (2, 32), "bits:mlp.2": (2, 32)}
    only_overrides = onefit.elasticize(MHAEncoder(), (x,), onefit.ElasticConfig(bits_layers={"head": (8,)}))
    assert [d.name for d in only_overrides.space if d.kind == "bits"] == ["bits:head"]


@pytest.mark.parametrize("build, shape", [(DepthwiseNet, (4, 3, 8, 8)),
                                          (lambda: onefit.zoo.mlp(hidden=32, layers=3), (6, 1, 8, 8))])
def test_extract_bakes_the_quantized_weights_and_equals_the_elastic_forward(build, shape):
    torch.manual_seed(0)
    model, x = randomize_norms(build()), torch.randn(*shape)
    family = onefit.elasticize(model, (x,), onefit.ElasticConfig(bits=LOW_BITS)).eval()
    for seed in range(3):
        arch = mixed_arch(family, seed)
        with torch.no_grad(), family.activate(arch):
            elastic = family(x)
            full_precision = family.extract({k: v for k, v in arch.items() if not k.startswith("bits:")})(x)
        sub = family.extract(arch).eval()
        with torch.no_grad():
            assert torch.allclose(sub(x), elastic, rtol=0, atol=1e-6)
        assert not torch.allclose(elastic, full_precision, atol=1e-3)  # quantization really happened
        for name, bits in family.bits(arch).items():
            weight = sub.get_submodule(name).weight
            assert max(len(torch.unique(row)) for row in weight.flatten(1)) <= 2**bits - 1, name
    with torch.no_grad():
        assert torch.allclose(family.extract(family.space.max())(x), model(x), atol=1e-6)


def test_a_narrower_sub_model_has_its_own_scales():
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(bits=(4,)))
    arch = {"width:1": 8, "bits:4": 4}  # layer 4 reads the first 8 of layer 1's outputs
    baked = family.extract(arch).get_submodule("4").weight
    full = family.module.get_submodule("4").weight.detach()
    assert torch.equal(baked, quantize_values(full[:, :8], 4))
    assert not torch.equal(baked, quantize_values(full, 4)[:, :8])


def test_weight_bytes_count_bits_and_scales():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    family = onefit.elasticize(model, (torch.randn(2, 256),), onefit.ElasticConfig(bits=(3, 8)))
    full = onefit.costs(family, family.space.max())
    assert full["weight_bytes"] == 4 * full["params"]
    at8 = onefit.costs(family, {k: 8 for k in family.space.names if k.startswith("bits:")})
    assert at8["params"] == full["params"]
    assert 0.25 < at8["weight_bytes"] / full["weight_bytes"] < 0.26  # plus a 4-byte scale per channel
    one = onefit.costs(family, {"bits:0": 3})  # 256 x 256 weights at 3 bits, 256 scales, 256 fp32 biases
    assert full["weight_bytes"] - one["weight_bytes"] == 4 * 256 * 257 - (256 * 256 * 3 // 8 + 4 * 256 + 4 * 256)


def test_the_sandwich_step_trains_through_the_quantized_weights():
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(bits=(2, 4, 8)))
    recipe = SortedNetRecipe(SortedNetConfig(), onefit.SandwichSampler(n_random=2))
    archs = recipe.sampler(family.space, random.Random(0))
    assert {a[k] for a in archs for k in a if k.startswith("bits:")} > {2, 32}
    optimizer = torch.optim.SGD(family.parameters(), lr=0.1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    before = {name: family.module.get_submodule(name).weight.detach().clone() for name in family.bits(archs[0])}
    result = recipe.step(family, (x, y), optimizer)
    assert math.isfinite(result["loss_largest"]) and math.isfinite(result["loss_mean"])
    for name, weight in before.items():
        assert not torch.equal(family.module.get_submodule(name).weight.detach(), weight), name
    family.zero_grad()
    with family.activate(family.space.min()):  # every layer at 2 bits: the gradient must still come through
        torch.nn.functional.cross_entropy(family(x), y).backward()
    for name in before:
        grad = family.module.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0 and grad.isfinite().all(), name


def test_activation_quantization_needs_calibration_then_matches_its_extraction():
    torch.manual_seed(0)
    model, x = randomize_norms(DepthwiseNet()), torch.randn(4, 3, 8, 8)
    config = onefit.ElasticConfig(bits=(4, 8), activation_bits=4)
    family = onefit.elasticize(model, (x,), config).eval()
    arch = mixed_arch(family)
    with torch.no_grad(), family.activate(family.space.max()):  # full precision needs no ranges
        assert torch.allclose(family(x), model(x), atol=1e-6)
    with pytest.raises(CalibrationError, match="calibration data missing for activation ranges .*calibrate_"):
        with torch.no_grad(), family.activate(arch):
            family(x)
    with pytest.raises(CalibrationError, match="calibration data missing"):
        family.extract(arch)
    calibrate_(family, [(x, None), x * 0.5])
    assert family.module.stem.input_quant.min_val == x.min() and family.module.stem.input_quant.max_val == x.max()
    assert not family.module.stem.input_quant.observing  # the flag is restored
    with torch.no_grad(), family.activate(arch):
        elastic = family(x)
    with torch.no_grad():
        assert torch.allclose(family.extract(arch)(x), elastic, rtol=0, atol=1e-6)
    weights_only = onefit.elasticize(model, (x,), onefit.ElasticConfig(bits=(4, 8))).eval()
    with torch.no_grad(), weights_only.activate(arch):
        assert not torch.allclose(weights_only(x), elastic, atol=1e-3)  # the inputs were quantized too


def test_a_family_with_bits_and_calibrated_ranges_round_trips(tmp_path):
    torch.manual_seed(0)
    model, source = onefit.zoo.build("mlp", hidden=32, layers=2)
    x = torch.randn(8, 1, 8, 8)
    config = onefit.ElasticConfig(bits=(2, 8), bits_layers={"1": (4,)}, activation_bits=8)
    family = calibrate_(onefit.elasticize(model, (x,), config).eval(), [x])
    family.source = source
    family.save(tmp_path / "fam")
    loaded = onefit.load(tmp_path / "fam").eval()
    assert loaded.config == config and loaded.space == family.space
    arch = mixed_arch(family)
    with torch.no_grad(), family.activate(arch), loaded.activate(arch):
        assert torch.equal(loaded(x), family(x))


def test_inspect_shows_bits_choices():
    report = onefit.inspect(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),),
                            onefit.ElasticConfig(bits=(4,)))
    first = next(layer for layer in report.layers if layer.name == "1")
    assert first.bits == "bits:1 (4, 32)"
    assert "| bits |" in report.to_markdown() and report.weight_bytes_min < report.weight_bytes_max / 4
    assert "| bits |" not in onefit.inspect(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),)).to_markdown()


def test_a_calibrated_forward_does_not_read_the_range_back_and_loading_restores_the_flag():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    quantizer, x = quant.ActivationQuantizer(8, "fc"), torch.randn(16)
    with pytest.raises(CalibrationError, match="'fc'"):
        quantizer(x)
    quantizer.observing = True
    quantizer(x)
    quantizer.observing = False
    with Ops() as ops:
        quantizer(x)
    assert ops.seen and not [op for op in ops.seen if "local_scalar_dense" in op]  # no host sync (.item, bool)
    fresh = quant.ActivationQuantizer(8, "fc")
    fresh.load_state_dict(quantizer.state_dict())
    assert fresh.observed and torch.equal(fresh(x), quantizer(x))
    fresh.reset()
    with pytest.raises(CalibrationError):
        fresh(x)
    fresh.load_state_dict(quant.ActivationQuantizer(8).state_dict())  # an uncalibrated range stays refused
    assert not fresh.observed


def test_weight_layer_sees_through_the_input_quantization_wrapper():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    config = onefit.ElasticConfig(bits=(4,), activation_bits=8)
    family = calibrate_(onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (x,), config).eval(), [x])
    sub = family.extract(family.space.min())
    wrapped = sub.get_submodule("1")
    assert not hasattr(wrapped, "weight") and type(quant.weight_layer(wrapped)) is nn.Linear
    plain = family.extract(family.space.max()).get_submodule("1")  # full precision: no wrapper
    assert quant.weight_layer(plain) is plain
