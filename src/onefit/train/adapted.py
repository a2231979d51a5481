"""Training adapters on a frozen family (``onefit.adapt``): SortedNet's sandwich rule over the
family's sub-models and the adapter ranks, with only the adapters and the task's head learning.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> adapters = onefit.adapt(family, ranks=(2, 4))
>>> recipe = AdapterRecipe()
>>> before = {n: p.clone() for n, p in family.module.named_parameters() if not p.requires_grad}
>>> out = recipe.step(family, (torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))), recipe.prepare(family))
>>> all(torch.equal(p, before[n]) for n, p in family.module.named_parameters() if n in before)  # frozen
True
"""

from __future__ import annotations

import torch

from onefit.train.recipe import register_recipe
from onefit.train.sorted import SortedNetRecipe


@register_recipe
class AdapterRecipe(SortedNetRecipe):
    name = "adapters"
    lr: float = 3e-3

    def prepare(self, family) -> torch.optim.Optimizer:
        adapters = getattr(family, "adapters", None)
        if adapters is None:
            raise ValueError("AdapterRecipe trains a family's adapters: attach them first with onefit.adapt(family)")
        return torch.optim.Adam(adapters.parameters(), lr=self.lr)
