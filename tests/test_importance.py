import pytest
import torch

import onefit
from conftest import MODELS, randomize_norms


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sorting_preserves_the_function(name):
    build, shape = MODELS[name]
    torch.manual_seed(1)
    model = randomize_norms(build())
    x = torch.randn(*shape)
    family = onefit.elasticize(model, (x,)).eval()
    with torch.no_grad():
        before = family(x)
        onefit.sort_(family)
        after = family(x)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item() + 1e-6


def test_sorting_puts_the_heaviest_channels_first():
    model = onefit.zoo.mlp(hidden=8, layers=1, norm=False)
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(8.0)[:, None].expand(8, 64))  # row i has L1 norm 64 * i
    family = onefit.sort_(onefit.elasticize(model, (torch.randn(1, 1, 8, 8),)))
    rows = family.module[1].weight.abs().sum(1)
    assert torch.equal(rows, torch.sort(rows, descending=True).values)
    assert rows[0] == 64 * 7


def test_importance_is_pluggable():
    calls = []

    def reverse_index(producers):
        calls.append(len(producers))
        return -torch.arange(producers[0].weight.shape[0], dtype=torch.float)

    family = onefit.elasticize(onefit.zoo.mlp(hidden=8, layers=1), (torch.randn(1, 1, 8, 8),))
    weight = family.module[1].weight.detach().clone()
    onefit.sort_(family, importance=reverse_index)
    assert calls and torch.equal(family.module[1].weight, weight)  # "keep the order" is a no-op
