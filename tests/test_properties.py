"""Property-based tests (hypothesis) of the numerical contracts, over random models, spaces and archs:
extract equals the elastic forward; the largest arch equals the original; counts equal torch's
FLOP counter and the extracted module's parameters; importance sorting keeps the function;
``canonical(arch)`` is the same sub-model as ``arch``; save then load gives the same outputs."""

import tempfile

import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

import onefit

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRACTIONS = st.lists(st.sampled_from([0.25, 0.5, 0.75]), min_size=1, max_size=3, unique=True)


@st.composite
def families(draw):
    """A small MLP or ResNet with random sizes and width choices, elasticized, with random weights
    and batch-norm statistics, and a random arch of its space."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        model = onefit.zoo.mlp(hidden=draw(st.sampled_from([8, 12, 16])), layers=draw(st.integers(1, 3)))
    else:
        model = onefit.zoo.resnet(widths=(draw(st.sampled_from([4, 8])), draw(st.sampled_from([8, 12]))),
                                  blocks=(draw(st.integers(1, 3)), draw(st.integers(1, 2))))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
    model.eval()
    config = onefit.ElasticConfig(width=(*draw(FRACTIONS), 1.0))
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),), config).eval()
    arch = {d.name: draw(st.sampled_from(d.choices)) for d in family.space}
    return model, family, arch


def _x():
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@SETTINGS
@given(families())
def test_extract_equals_the_elastic_forward_and_the_largest_the_original(case):
    model, family, arch = case
    x = _x()
    with torch.no_grad(), family.activate(arch):
        elastic = family(x)
    sub = family.extract(arch).eval()
    with torch.no_grad():
        assert torch.allclose(sub(x), elastic, atol=1e-5)
        with family.activate(family.space.max()):
            assert torch.allclose(family(x), model(x), atol=1e-5)


@SETTINGS
@given(families())
def test_counts_equal_the_flop_counter_and_the_parameters(case):
    _, family, arch = case
    sub = family.extract(arch).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        sub(torch.randn(1, 1, 8, 8))
    costs = onefit.costs(family, arch)
    assert costs["macs"] == counter.get_total_flops() // 2
    assert costs["params"] == sum(p.numel() for p in sub.parameters())


@SETTINGS
@given(families())
def test_importance_sorting_keeps_the_function(case):
    model, family, _ = case
    x = _x()
    sorted_family = onefit.sort_(family).eval()
    with torch.no_grad(), sorted_family.activate(sorted_family.space.max()):
        assert torch.allclose(sorted_family(x), model(x), atol=1e-4)


@SETTINGS
@given(families())
def test_canonical_arch_is_the_same_sub_model(case):
    _, family, arch = case
    x = _x()
    canonical = family.canonical(arch)
    with torch.no_grad():
        assert torch.allclose(family.extract(canonical).eval()(x), family.extract(arch).eval()(x), atol=1e-6)
    assert onefit.costs(family, canonical) == onefit.costs(family, arch)
    assert family.canonical(canonical) == canonical


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(families())
def test_save_then_load_gives_the_same_outputs(case):
    _, family, arch = case
    x = _x()
    with tempfile.TemporaryDirectory() as folder:
        family.save(folder)
        loaded = onefit.load(folder).eval()
    assert loaded.space == family.space
    with torch.no_grad(), family.activate(arch), loaded.activate(arch):
        assert torch.equal(family(x), loaded(x))
