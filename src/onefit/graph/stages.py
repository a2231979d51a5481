"""Depth stages: ``nn.Sequential`` runs of blocks whose tail can be skipped.

Skipping block ``i`` feeds its input straight to block ``i + 1``, which is only sound when the
block's output has the same shape and the same channel group as its input. A residual block
already has that; for a plain block, making it skippable ties its input and output widths
together, which is done here by a union.
"""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from onefit.elastic.registry import elastic_type_for
from onefit.graph.plan import StagePlan


def _is_block(module: nn.Module) -> bool:
    """A composite block with weights (not a single layer such as a Linear)."""
    return elastic_type_for(module) is None and any(True for _ in module.children()) and any(
        True for _ in module.parameters()
    )


def _block_nodes(traced: fx.GraphModule, path: str) -> list[fx.Node]:
    return [n for n in traced.graph.nodes if any(v[0] == path for v in n.meta.get("nn_module_stack", {}).values())]


def _block_io(traced: fx.GraphModule, path: str) -> tuple[fx.Node, fx.Node] | None:
    """The single node feeding the block and the single node it returns, or None if not single."""
    nodes = _block_nodes(traced, path)
    if not nodes:
        return None
    inside = set(nodes)
    inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside and a.op != "get_attr"}
    exits = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or exits != [nodes[-1]]:
        return None
    return inputs.pop(), nodes[-1]


def _skippable(traced: fx.GraphModule, path: str, walker) -> bool:
    io = _block_io(traced, path)
    if io is None:
        return False
    x, y = io
    sx, sy = x.meta.get("tensor_meta"), y.meta.get("tensor_meta")
    if sx is None or sy is None or tuple(sx.shape) != tuple(sy.shape):
        return False
    cx, cy = walker.chan.get(x), walker.chan.get(y)
    if cx is not None and cy is not None:
        if cx.axis != cy.axis or cx.unit != cy.unit:
            return False
        walker.union(cx, cy, f"skippable block {path}")
    else:
        # One side has a fixed width, so the other must keep it too.
        walker.freeze(cx or cy, f"block {path} must be skippable, its other side has a fixed width")
    return True


def find_stages(model: nn.Module, traced: fx.GraphModule, walker) -> list[StagePlan]:
    stages = []
    for path, module in model.named_modules():
        # The root cannot be swapped for an elastic stage in place, so stages start one level down.
        if not path or not isinstance(module, nn.Sequential) or len(module) < 2:
            continue
        children = [name for name, _ in module.named_children()]
        if not all(_is_block(child) for child in module):
            continue
        prefix = f"{path}."
        # Keep the first block always (it may change shape); the skippable tail starts after it.
        min_depth = len(children)
        while min_depth > 1 and _block_io(traced, prefix + children[min_depth - 1]) is not None:
            if not _skippable(traced, prefix + children[min_depth - 1], walker):
                break
            min_depth -= 1
        if min_depth < len(children):
            stages.append(StagePlan(path, len(children), min_depth))
    return stages
