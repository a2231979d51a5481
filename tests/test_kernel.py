"""Kernel size as a dimension (Once-for-All): contract tests on every model with 5 x 5 or larger
convolutions, the transform's start and training, counts, ONNX parity, and bad input."""

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import onefit

CONFIG = onefit.ElasticConfig(width=(0.5, 1.0), kernel=(3, 5))


def models():
    """Every zoo model with convolutions of kernel 5 or more, with its example input."""
    return {
        "mobilenet_v3 (7x7 depthwise)": (onefit.zoo.mobilenet_v3(kernel=7), torch.randn(1, 1, 8, 8)),
        "convnext (7x7 depthwise)": (onefit.zoo.convnext(), torch.randn(1, 1, 8, 8)),
        "temporal_cnn (5-tap stem)": (onefit.zoo.temporal_cnn(), torch.randn(1, 4, 32)),
    }


@pytest.fixture(params=sorted(models()))
def case(request):
    torch.manual_seed(0)
    model, example = models()[request.param]
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    family = onefit.elasticize(model, (example,), CONFIG).eval()
    with torch.no_grad():  # transforms away from the identity, so a smaller kernel is not just a crop
        for name, p in family.named_parameters():
            if "kernel_transform" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return request.param, model, example, family


def test_kernel_dimensions_the_largest_is_exact_and_extract_equals_the_elastic_forward(case, tmp_path):
    name, model, example, family = case
    kernels = [d for d in family.space if d.kind == "kernel"]
    assert kernels, name
    x = torch.randn(3, *example.shape[1:])
    with torch.no_grad(), family.activate(family.space.max()):
        assert torch.allclose(family(x), model(x), atol=1e-5)
    rng = random.Random(0)
    for arch in [family.space.min()] + [family.space.sample(rng) for _ in range(3)]:
        sub = family.extract(arch).eval()
        with torch.no_grad(), family.activate(arch):
            assert torch.allclose(sub(x), family(x), atol=1e-5), arch
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            sub(example)
        costs = onefit.costs(family, arch)
        assert costs["params"] == sum(p.numel() for p in sub.parameters())
        assert costs["macs"] == counter.get_total_flops() // 2
    smallest = family.extract(family.space.min()).eval()
    assert all(m.kernel_size[0] == 3 for m in smallest.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))
               and m.kernel_size[0] > 1 and f"kernel:{_name(smallest, m)}" in family.space.names)
    report = onefit.export(smallest, tmp_path / "k3.onnx", (example,))
    assert report.cosine > 0.99999


def _name(root, module):
    return next(n for n, m in root.named_modules() if m is module)


def test_a_smaller_kernel_starts_as_the_centre_and_its_map_learns():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 7, padding=3), nn.Flatten(), nn.Linear(4 * 64, 3))
    family = onefit.elasticize(net, (torch.randn(1, 1, 8, 8),), onefit.ElasticConfig(width=(1.0,), kernel=(3, 5)))
    conv = family.extract({"kernel:0": 3})[0]
    assert torch.equal(conv.weight, net[0].weight[:, :, 2:5, 2:5])  # identity maps: the centre
    assert conv.padding == (1, 1)
    maps = [p for n, p in family.named_parameters() if "kernel_transform" in n]
    assert [tuple(p.shape) for p in maps] == [(9, 9), (25, 25)]
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))) for _ in range(4)]
    onefit.train(family, batches, epochs=2, progress=False)
    assert not torch.equal(maps[0].detach(), torch.eye(9))  # the 5 -> 3 map learned
    assert onefit.inspect(net, (torch.randn(1, 1, 8, 8),), onefit.ElasticConfig(kernel=(3,))).layers[0].columns[
        "kernel"] == "kernel:0 (3, 7)"


def test_bad_kernel_choices_name_what_is_allowed():
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.Flatten(), nn.Linear(4 * 64, 3))
    example = (torch.randn(1, 1, 8, 8),)
    with pytest.raises(ValueError, match="odd positive integers"):
        onefit.ElasticConfig(kernel=(4,))
    with pytest.raises(ValueError, match="offer no smaller kernel to any convolution; their kernels are at most 5"):
        onefit.elasticize(net, example, onefit.ElasticConfig(kernel=(7,)))
    tight = nn.Sequential(nn.Conv2d(1, 4, 5, padding=0), nn.Flatten(), nn.Linear(4 * 16, 3))
    report = onefit.inspect(tight, example, onefit.ElasticConfig(kernel=(3,)))
    assert "padding (0, 0) too small" in report.layers[0].columns["kernel"]
