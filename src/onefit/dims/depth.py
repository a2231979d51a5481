"""Depth: one dimension per stage of repeated blocks (an ``nn.Sequential`` or an encoder's
``ModuleList``); the first d blocks run, or, in a ``ModuleList`` ranked by ``onefit.order_depth_``,
the d most important in their original order. Extraction keeps only those blocks.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
>>> family.space["depth:stages.0"].choices, family.skipped({"depth:stages.0": 1})
((1, 2), ('stages.0.1.',))
"""

from __future__ import annotations

from onefit.dims.base import Kind, register_kind
from onefit.elastic.registry import replace_module
from onefit.space import Dimension


@register_kind
class DepthKind(Kind):
    names = ("depth",)

    def dimensions(self, family) -> list[Dimension]:
        return [Dimension(s.dim_name, "depth", family.config.depth_choices(s.min_depth, s.blocks))
                for s in family.plan.stages]

    def settings(self, family, arch):
        depths = family.depths(arch)
        return [(family.module.get_submodule(s.name), "active_depth", depths[s.name]) for s in family.plan.stages]

    def skipped(self, family, arch):
        depths, skipped = family.depths(arch), []
        for s in family.plan.stages:
            kept = family.module.get_submodule(s.name).kept(depths[s.name])
            skipped += [f"{s.name}.{i}." for i in range(s.blocks) if i not in kept]
        return tuple(skipped)

    def idle(self, family, arch, gone):
        return {s.dim_name for s in family.plan.stages if gone(s.name)}  # a stage inside a skipped block

    def after_extract_(self, family, sub, arch) -> None:
        depths = family.depths(arch)
        for stage in sorted(family.plan.stages, key=lambda s: -s.name.count(".")):  # innermost first
            replace_module(sub, stage.name, sub.get_submodule(stage.name).to_plain(depths[stage.name]))
