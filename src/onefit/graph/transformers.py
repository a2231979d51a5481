"""Plans for Hugging Face transformer encoders (BERT, MiniLM, ViT, ...), which torch.fx cannot trace.

Their structure is regular, so it is read off the modules instead of a graph: every block of
``<encoder>.layer`` (BERT), ``<model>.layers`` (ViT) or ``<model>.h`` (GPT-2) gets a ``heads`` dimension (query, key and value outputs shrink by whole
heads, the attention output projection's inputs follow) and an FFN ``width`` dimension; the
encoder's ``layer`` list is a depth stage. The hidden size, the residual stream every block reads
and writes, is kept whole. This relies on the attention reshaping with ``-1`` heads, as
transformers 5 does, so a block with fewer heads runs unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan

# Block layouts, relative to one block:
# (self-attention module, its q/k/v, attention output, FFN in, FFN out, head-size attribute)
LAYOUTS = {
    "bert": ("attention.self", ("query", "key", "value"), "attention.output.dense", "intermediate.dense",
             "output.dense", "attention_head_size"),
    "vit": ("attention", ("q_proj", "k_proj", "v_proj"), "attention.o_proj", "mlp.fc1", "mlp.fc2", "head_dim"),
    # GPT-2: one fused q|k|v projection (transformers' Conv1D), split by the attention's split_size
    "gpt2": ("attn", ("c_attn",), "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "head_dim"),
}
LISTS = ("layer", "layers", "h")  # the attribute holding an encoder's blocks
HIDDEN = "the hidden size (residual stream of a transformer encoder) is kept whole"


def _layout(block: nn.Module) -> tuple | None:
    names = {n for n, _ in block.named_modules()}
    for layout in LAYOUTS.values():
        attn, qkv, out, ffn_in, ffn_out, _ = layout
        if {f"{attn}.{q}" for q in qkv} | {out, ffn_in, ffn_out} <= names:
            return layout
    return None


def find_encoders(model: nn.Module) -> list[str]:
    """Paths of the block lists (``<module>.layer`` or ``.layers``) made of known transformer blocks."""
    found = []
    for path, module in model.named_modules():
        for attr in LISTS:
            blocks = module._modules.get(attr)
            if isinstance(blocks, nn.ModuleList) and len(blocks) and all(_layout(b) for b in blocks):
                found.append(f"{path}.{attr}" if path else attr)
    return found


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _out_features(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.nf


def _linear_shapes(model: nn.Module, example_inputs: tuple) -> dict[str, tuple[tuple, tuple]]:
    shapes, hooks = {}, []
    for name, module in model.named_modules():
        if _is_linear(module):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, (tuple(i[0].shape), tuple(o.shape)))))
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return shapes


def encoder_plan(model: nn.Module, example_inputs: tuple) -> Plan | None:
    """A plan for ``model`` if it holds a known transformer encoder, else None."""
    encoders = find_encoders(model)
    if not encoders:
        return None
    shapes = _linear_shapes(model, example_inputs)
    groups: dict[int, Group] = {}
    layers: dict[str, LayerPlan] = {}

    def new_group(size: int, **kw) -> int:
        gid = len(groups)
        groups[gid] = Group(gid, size, **kw)
        return gid

    def linear(name: str, in_group: int | None, out_group: int | None, segments: int = 1) -> None:
        (in_shape, out_shape) = shapes.get(name, ((1, 1), (1, 1)))
        layers[name] = LayerPlan(name, "linear", in_group, out_group, 1, math.prod(out_shape[1:-1]),
                                 in_positions=math.prod(in_shape[1:-1]), segments=segments)

    stages, bindings = [], []
    for path in encoders:
        blocks = model.get_submodule(path)
        hidden = new_group(_out_features(blocks[0].get_submodule(_layout(blocks[0])[2])), frozen=HIDDEN,
                           label=f"{path}.hidden")
        for i, block in enumerate(blocks):
            attn, qkv, out, ffn_in, ffn_out, head_attr = _layout(block)
            b = f"{path}.{i}"
            head_size = getattr(block.get_submodule(attn), head_attr)
            fused = 3 if len(qkv) == 1 else 1  # one projection holding q, k and v side by side
            heads = new_group(_out_features(block.get_submodule(f"{attn}.{qkv[0]}")) // fused, multiple=head_size,
                              kind="heads", label=f"{b}.{attn}", producers=[f"{b}.{attn}.{q}" for q in qkv])
            for q in qkv:
                linear(f"{b}.{attn}.{q}", hidden, heads, segments=fused)
            if fused > 1:
                bindings.append((f"{b}.{attn}", "split_size", heads))
            linear(f"{b}.{out}", heads, hidden)
            ffn = new_group(_out_features(block.get_submodule(ffn_in)), producers=[f"{b}.{ffn_in}"])
            linear(f"{b}.{ffn_in}", hidden, ffn)
            linear(f"{b}.{ffn_out}", ffn, hidden)
        stages.append(StagePlan(path, len(blocks), 1))
    for name in shapes:  # other Linear layers (poolers, heads): whole, but their MACs count
        if name not in layers:
            linear(name, None, None)
    return Plan(groups, layers, stages, [f"{path}: {HIDDEN}" for path in encoders], bindings=bindings)
