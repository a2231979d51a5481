"""Rank: every Linear and plain convolution a rank setting names becomes U·V (``onefit.elastic.
lowrank``) with a ``rank:<layer>`` dimension; the first r components run. Extraction gives two
plain layers of rank r, or the dense layer where that is cheaper, and the counts follow.

>>> import torch, onefit
>>> config = onefit.ElasticConfig(width=(1.0,), depth=False, rank_layers={"1": (0.25, 1.0)})
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=1), (torch.randn(2, 1, 8, 8),), config)
>>> family.factorized, family.space["rank:1"].choices
(['1'], (16, 64))
>>> [type(m).__name__ for m in family.extract({"rank:1": 16})[1]]  # two plain layers of rank 16
['Linear', 'Linear']
"""

from __future__ import annotations

from onefit.dims.base import Kind, register_kind
from onefit.elastic.lowrank import factorize_, lowrank_cost
from onefit.space import Dimension


@register_kind
class RankKind(Kind):
    names = ("rank",)

    def setup_(self, family) -> None:
        family.config.check_patterns("rank_layers", family.config.rank_layers,
                                     [layer.name for layer in family.plan.layers.values()
                                      if getattr(family.module.get_submodule(layer.name), "factorizable", False)])
        # layers factorized as U V; the others a rank setting names stay dense, and rank_notes says why
        family.factorized, family.rank_notes = factorize_(family.module, family.plan, family.config)

    def dimensions(self, family) -> list[Dimension]:
        return [Dimension(f"rank:{n}", "rank", family.module.get_submodule(n).rank_choices) for n in family.factorized]

    def values(self, family, arch) -> dict[str, int]:
        """Rank of every factorized layer with a rank dimension in ``arch``."""
        return {name: arch[f"rank:{name}"] for name in family.factorized if f"rank:{name}" in arch}

    def settings(self, family, arch):
        return [(family.module.get_submodule(name), "active_rank", r) for name, r in self.values(family, arch).items()]

    def idle(self, family, arch, gone):
        return {f"rank:{n}" for n in family.factorized if gone(n)}

    def before_extract_(self, family, sub, arch) -> None:
        for name, rank in self.values(family, arch).items():  # the copy's layers extract at the arch's rank
            sub.get_submodule(name).active_rank = rank

    def cost_(self, family, arch, rows) -> None:
        for name, rank in self.values(family, arch).items():
            if name in rows:  # two factors of the arch's rank, or dense where that is cheaper
                row = rows[name]
                row["params"], row["macs"] = lowrank_cost(family.module.get_submodule(name), row["n_in"], row["n_out"],
                                                          rank, row["positions_all"])
                row["bytes"] = 4 * row["params"]

    def columns(self, family, name):
        dim = f"rank:{name}"
        if dim in family.space.names:
            return {"rank": (f"{dim} {family.space[dim].choices}", True)}
        return {"rank": (family.rank_notes[name], False)} if name in family.rank_notes else {}
