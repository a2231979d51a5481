import random

import torch
from torch.utils.flop_counter import FlopCounterMode

import onefit


def test_counts_match_the_extracted_module_and_the_flop_counter(zoo_case):
    name, model, x = zoo_case
    family = onefit.elasticize(model, (x,))
    rng = random.Random(1)
    for arch in [family.space.min(), family.space.max()] + [family.space.sample(rng) for _ in range(4)]:
        sub = family.extract(arch).eval()
        counted = onefit.costs(family, arch)
        assert counted["params"] == sum(p.numel() for p in sub.parameters()), (name, arch)
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            sub(x[:1])
        assert counted["macs"] == flops.get_total_flops() // 2, (name, arch)


def test_costs_grow_along_the_nested_chain():
    family = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
    chain = [onefit.costs(family, a) for a in family.space.nested_chain()]
    assert all(a["params"] <= b["params"] and a["macs"] <= b["macs"] for a, b in zip(chain, chain[1:]))
    assert chain[0]["params"] < chain[-1]["params"]
