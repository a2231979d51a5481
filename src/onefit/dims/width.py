"""Width and heads: one dimension per elastic channel group of the plan (the channels that must
shrink together), its choices in channels (width) or in whole heads (heads: channels come in
heads of ``group.multiple``). Layers producing a group are told their active output width; the
rest read their input width from the tensor they receive.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=1), (torch.randn(2, 1, 8, 8),))
>>> family.space["width:1"].choices  # the hidden layer's group: 1/4, 1/2, 3/4 and all of 64
(16, 32, 48, 64)
"""

from __future__ import annotations

from onefit.dims.base import Kind, register_kind
from onefit.space import Dimension


@register_kind
class WidthKind(Kind):
    names = ("width", "heads", "hidden", "kv")

    def setup_(self, family) -> None:
        family.config.check_patterns("layers", family.config.layers, list(family.plan.layers))

    def dimensions(self, family) -> list[Dimension]:
        config, dims = family.config, {}
        for g in family.plan.groups.values():
            if not g.elastic or (g.kind == "hidden" and config.hidden is None) or (g.kind == "kv" and
                                                                                config.kv_heads is None):
                continue  # the stream and the key/value groups shrink when asked
            dim = Dimension(g.name, g.kind, config.choices(g.size, g.multiple, g.producers, g.kind))
            if dims.setdefault(g.name, dim) != dim:  # groups tied by ElasticConfig(uniform=True)
                raise ValueError(f"uniform: the groups of {g.name} differ in their choices ({dims[g.name].choices} "
                                 f"and {dim.choices}); give them one override, or uniform=False")
        return list(dims.values())

    def settings(self, family, arch):
        widths, plan, module = family.widths(arch), family.plan, family.module
        settings = [(module.get_submodule(layer.name), "active_out", widths.get(layer.out_group))
                    for layer in plan.layers.values() if layer.kind in ("linear", "conv", "mha", "embedding")]
        settings += [(module.get_submodule(m), attr, widths[g] // per) for m, attr, g, per in plan.bindings]
        settings += [(module.get_submodule(layer.name), "in_index", family.input_index(layer, widths))
                     for layer in plan.layers.values() if layer.in_segments]
        settings += [(module.get_submodule(layer.name), "active_segments", family.parts(layer, widths))
                     for layer in plan.layers.values() if layer.segment_group is not None and not layer.in_segments]
        return settings

    def idle(self, family, arch, gone):
        """Groups no layer outside the skipped blocks reads or writes."""
        plan = family.plan
        live = {g for layer in plan.layers.values() if not gone(layer.name)
                for g in (layer.in_group, layer.out_group, layer.segment_group, *(g for g, _ in layer.in_segments))}
        live |= {g for module, _, g, _ in plan.bindings if not gone(module)}
        live_names = {plan.groups[g].name for g in live if g is not None}  # a tied name is idle only if all are
        return {g.name for gid, g in plan.groups.items() if gid not in live} - live_names
