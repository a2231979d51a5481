"""Plans for transformers' Mamba state-space models, read off their modules (torch.fx cannot
trace them): every block's mixer gets an inner-width dimension (its channels, each a selective
scan of its own, as Minitron-SSM prunes Mamba's inner width; ``onefit.elastic.mamba``) and the
block list is a depth stage. The hidden size, the state size and the step-size rank stay whole.

>>> find_mamba(nn.Sequential(nn.Linear(2, 2)))
[]
"""

from __future__ import annotations

import math

from torch import nn

from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan

MIXERS = ("MambaMixer",)
HIDDEN = "the hidden size of a Mamba model is kept whole (its inner width and depth shrink)"


def _is_block(block: nn.Module) -> bool:
    return type(getattr(block, "mixer", None)).__name__ in MIXERS


def find_mamba(model: nn.Module) -> list[str]:
    """Paths of the block lists (``<backbone>.layers``) made of Mamba blocks."""
    return [f"{path}.layers" if path else "layers" for path, module in model.named_modules()
            if isinstance(module._modules.get("layers"), nn.ModuleList) and len(module.layers)
            and all(_is_block(b) for b in module.layers)]


def mamba_plan(model: nn.Module, example_inputs: tuple) -> Plan | None:
    """A plan for ``model`` if it holds Mamba blocks, else None."""
    from onefit.graph.transformers import linear_shapes

    paths = find_mamba(model)
    if not paths:
        return None
    shapes, _ = linear_shapes(model, example_inputs)
    groups: dict[int, Group] = {}
    layers: dict[str, LayerPlan] = {}
    stages, mixers = [], []
    for path in paths:
        blocks = model.get_submodule(path)
        groups[len(groups)] = Group(len(groups), blocks[0].mixer.hidden_size, frozen=HIDDEN, kind="hidden", label=path)
        for i, block in enumerate(blocks):
            name, mixer = f"{path}.{i}.mixer", block.mixer
            gid = len(groups)
            groups[gid] = Group(gid, mixer.intermediate_size, producers=[name], label=name, tie=f"{path}.inner")
            tokens = _positions(shapes.get(f"{name}.in_proj"))
            layers[name] = LayerPlan(name, "linear", None, gid, positions=tokens, in_positions=tokens,
                                     in_fixed=HIDDEN)
            mixers.append(f"{name}.")
        stages.append(StagePlan(path, len(blocks), 1))
    for name, (in_shape, out_shape) in shapes.items():  # the head: whole, but its MACs count
        if not f"{name}.".startswith(tuple(mixers)):
            tokens = _positions((in_shape, out_shape))
            layers[name] = LayerPlan(name, "linear", None, None, positions=tokens, in_positions=tokens)
    return Plan(groups, layers, stages, [f"{path}: {HIDDEN}" for path in paths])


def _positions(shapes) -> int:
    """Positions per sample a Linear sees, from its (input shape, output shape); 1 if unseen."""
    return 1 if shapes is None else math.prod(shapes[0][1:-1])


def match_mamba_config_(model: nn.Module) -> str | None:
    """Make an extracted Mamba model's config describe its blocks (their number, the inner
    width, cache indices and per-layer types); returns why it cannot, or None."""
    paths = find_mamba(model)
    config = getattr(model, "config", None)
    if len(paths) != 1 or config is None:
        return None
    blocks = model.get_submodule(paths[0])
    widths = {block.mixer.intermediate_size for block in blocks}
    if len(widths) > 1:
        return "its blocks differ in their inner widths"
    original = [block.mixer.layer_idx for block in blocks]
    config.num_hidden_layers, config.intermediate_size = len(blocks), widths.pop()
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and not isinstance(getattr(type(config), "layer_types", None), property):
        config.layer_types = [types[i] for i in original]
    for i, block in enumerate(blocks):
        block.mixer.layer_idx = i
        if hasattr(block, "layer_idx"):
            block.layer_idx = i
    return None
