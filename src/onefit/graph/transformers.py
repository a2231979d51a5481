"""Plans for Hugging Face transformers (BERT, MiniLM, ViT, GPT-2, Llama-family decoders), which
torch.fx cannot trace.

Their structure is regular, so it is read off the modules instead of a graph: every block of
``<encoder>.layer`` (BERT, RoBERTa, DistilBERT), ``<model>.layers`` (ViT, Llama, Mistral, Qwen2,
Gemma, Phi-3) or ``<model>.h`` (GPT-2) gets a
``heads`` dimension (query, key and value outputs shrink by whole heads, the attention output
projection's inputs follow) and an FFN ``width`` dimension (a gated MLP's gate and up outputs
and its down projection's inputs are one group); the block list is a depth stage. The hidden
size, the residual stream every block reads and writes, is kept whole. This relies on the
attention reshaping with ``-1`` heads, as transformers 5 does, so a block with fewer heads runs
unchanged.

Grouped-query attention (fewer key/value heads than query heads, ``num_key_value_groups`` > 1),
as Minitron prunes it: the key/value heads, the head size and the rotary positions stay; the
query heads shrink inside each key/value group, the same number in every group (its ``heads``
dimension counts query heads *per key/value group*), ranked by importance within their group
(one ranking shared by the groups). q_proj is a segmented layer, one segment per key/value head,
each keeping its first heads; o_proj reads the same segments; the attention's
``num_key_value_groups`` follows the choice.

>>> sorted(LAYOUTS)
['bert', 'distilbert', 'gpt2', 'llama', 'phi3', 'vit']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan

@dataclass(frozen=True)
class Layout:
    """Where one block keeps its parts, relative to the block."""

    attention: str  # the self-attention module
    qkv: tuple[str, ...]  # its query, key and value projections (one when fused)
    out: str  # the attention's output projection
    ffn_in: tuple[str, ...]  # the FFN's input projections (gate and up for a gated MLP)
    ffn_out: str  # the FFN's output projection
    head_size: str  # the attention's attribute holding the size of one head
    fixed_heads: str | None = None  # why this layout's heads cannot shrink, if they cannot
    ffn_segments: int = 1  # a fused gate|up projection (Phi-3): its halves shrink alike

    @property
    def fused(self) -> int:
        """Parts of the query projection's outputs: 3 when one projection holds q, k and v."""
        return 3 if len(self.qkv) == 1 else 1


LAYOUTS = {
    "bert": Layout("attention.self", ("query", "key", "value"), "attention.output.dense", ("intermediate.dense",),
                   "output.dense", "attention_head_size"),
    "vit": Layout("attention", ("q_proj", "k_proj", "v_proj"), "attention.o_proj", ("mlp.fc1",), "mlp.fc2", "head_dim"),
    # GPT-2: one fused q|k|v projection (transformers' Conv1D), split by the attention's split_size
    "gpt2": Layout("attn", ("c_attn",), "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj", "head_dim"),
    # Llama, Mistral, Qwen2, Gemma, SmolLM, ...: a gated MLP, RMSNorm, rotary positions
    "llama": Layout("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"),
                    "mlp.down_proj", "head_dim"),
    "distilbert": Layout("attention", ("q_lin", "k_lin", "v_lin"), "attention.out_lin", ("ffn.lin1",), "ffn.lin2",
                         "attention_head_size"),
    # Phi-3: q|k|v fused and split at offsets its config fixes; gate|up fused and split in halves,
    # each half keeping its first channels
    "phi3": Layout("self_attn", ("qkv_proj",), "self_attn.o_proj", ("mlp.gate_up_proj",), "mlp.down_proj", "head_dim",
                   fixed_heads="its fused qkv_proj is split at offsets the model's config fixes "
                               "(num_attention_heads x head_dim); kept whole", ffn_segments=2),
}
LISTS = ("layer", "layers", "h")  # the attribute holding an encoder's blocks
HIDDEN = "the hidden size (residual stream of a transformer encoder) is kept whole"
KV = ("grouped-query attention: the key/value heads are kept (the query heads shrink inside each key/value "
      "group)")


def _layout(block: nn.Module) -> Layout | None:
    names = {n for n, _ in block.named_modules()}
    for layout in LAYOUTS.values():
        if {f"{layout.attention}.{q}" for q in layout.qkv} | {layout.out, *layout.ffn_in, layout.ffn_out} <= names:
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


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.weight.shape[0]


def on_meta(model: nn.Module) -> bool:
    """Whether ``model``'s weights are on the meta device (shapes without storage)."""
    return any(p.is_meta for p in model.parameters())


def _linear_shapes(model: nn.Module, example_inputs: tuple) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of every linear layer in one forward on the example; for a
    model on the meta device, which cannot run transformers' data-dependent mask code, every
    linear layer is taken to see the example's positions (a sequence of token ids)."""
    if on_meta(model):
        positions = tuple(example_inputs[0].shape)
        return {name: ((*positions, _in_features(m)), (*positions, _out_features(m)))
                for name, m in model.named_modules() if _is_linear(m)}
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
        hidden = new_group(_out_features(blocks[0].get_submodule(_layout(blocks[0]).out)), frozen=HIDDEN,
                           label=f"{path}.hidden")
        for i, block in enumerate(blocks):
            layout = _layout(block)
            b, attn = f"{path}.{i}", block.get_submodule(layout.attention)
            head_size = getattr(attn, layout.head_size)
            fused = layout.fused
            qkv = [f"{b}.{layout.attention}.{q}" for q in layout.qkv]
            query_channels = _out_features(model.get_submodule(qkv[0])) // fused
            groups_per_kv = getattr(attn, "num_key_value_groups", 1)
            if layout.fixed_heads:  # the heads cannot shrink: every projection stays whole, at its own size
                for name in qkv:
                    linear(name, hidden, new_group(_out_features(model.get_submodule(name)), frozen=layout.fixed_heads,
                                                   label=name))
                out = f"{b}.{layout.out}"
                linear(out, new_group(_in_features(model.get_submodule(out)), frozen=layout.fixed_heads,
                                      label=f"{out}.in"), hidden)
            elif groups_per_kv > 1:  # grouped-query attention: query heads shrink inside each key/value group
                kv_heads = query_channels // head_size // groups_per_kv
                per_kv = query_channels // kv_heads  # one segment of q_proj's outputs per key/value head
                heads = new_group(per_kv, multiple=head_size, kind="heads", label=f"{b}.{layout.attention}",
                                  producers=qkv[:1], tie=path)
                kv = new_group(_out_features(model.get_submodule(qkv[1])), frozen=KV, label=f"{b}.kv")
                linear(qkv[0], hidden, heads, segments=kv_heads)
                for name in qkv[1:]:
                    linear(name, hidden, kv)
                out = f"{b}.{layout.out}"
                linear(out, None, hidden)
                layers[out].in_segments = ((heads, per_kv),) * kv_heads  # each group's first heads
                bindings.append((f"{b}.{layout.attention}", "num_key_value_groups", heads, head_size))
            else:
                heads = new_group(query_channels, multiple=head_size, kind="heads", label=f"{b}.{layout.attention}",
                                  producers=qkv, tie=path)
                for name in qkv:
                    linear(name, hidden, heads, segments=fused)
                if fused > 1:
                    bindings.append((f"{b}.{layout.attention}", "split_size", heads, 1))
                linear(f"{b}.{layout.out}", heads, hidden)
            ffn_in = [f"{b}.{name}" for name in layout.ffn_in]
            ffn = new_group(_out_features(model.get_submodule(ffn_in[0])) // layout.ffn_segments, producers=ffn_in,
                            tie=f"{path}.ffn")
            for name in ffn_in:
                linear(name, hidden, ffn, segments=layout.ffn_segments)
            linear(f"{b}.{layout.ffn_out}", ffn, hidden)
        stages.append(StagePlan(path, len(blocks), 1))
    for name in shapes:  # other Linear layers (poolers, heads): whole, but their MACs count
        if name not in layers:
            linear(name, None, None)
    return Plan(groups, layers, stages, [f"{path}: {HIDDEN}" for path in encoders], bindings=bindings)


# The config attributes that say how many blocks, heads and FFN channels a model has, by name
# across architectures (Llama / BERT, GPT-2, DistilBERT); the first one a config has is used.
CONFIG_NAMES = {"layers": ("num_hidden_layers", "n_layer", "n_layers"),
                "heads": ("num_attention_heads", "n_head", "n_heads"),
                "ffn": ("intermediate_size", "n_inner", "hidden_dim")}
UNEXPRESSIBLE = ("a transformers config cannot describe this sub-model ({why}); its config still describes the "
                 "original, so save_pretrained would not reload it (ElasticConfig(uniform=True) gives sub-models "
                 "a config can describe)")


def match_config_(model: nn.Module) -> str | None:
    """Make an extracted transformers model's config describe its blocks (their number, query
    heads and FFN width; the layers' cache indices and per-layer types follow the blocks kept), so
    ``save_pretrained`` writes a model ``from_pretrained`` reloads. Returns why it cannot, or None
    (also for a model that is not a transformers model)."""
    config = getattr(model, "config", None)
    encoders = find_encoders(model) if config is not None and hasattr(model, "save_pretrained") else []
    if len(encoders) != 1:
        return None
    blocks = model.get_submodule(encoders[0])
    layout = _layout(blocks[0])
    heads, kv_heads, ffn, original = set(), set(), set(), []
    for block in blocks:
        attention = block.get_submodule(layout.attention)
        head_size = getattr(attention, layout.head_size)
        query = _out_features(block.get_submodule(f"{layout.attention}.{layout.qkv[0]}"))
        heads.add(query // layout.fused // head_size)
        if len(layout.qkv) == 3:  # multi-head attention shrinks its key/value heads with the queries
            kv_heads.add(_out_features(block.get_submodule(f"{layout.attention}.{layout.qkv[1]}")) // head_size)
        ffn.add(_out_features(block.get_submodule(layout.ffn_in[0])) // layout.ffn_segments)
        original.append(getattr(attention, "layer_idx", None))
    if len(heads) > 1 or len(ffn) > 1:
        return UNEXPRESSIBLE.format(why="its blocks differ in their query heads or FFN widths")
    names = {k: next((n for n in v if hasattr(config, n)), None) for k, v in CONFIG_NAMES.items()}
    (n_heads,), (n_ffn,) = heads, ffn
    if names["heads"] and not layout.fixed_heads and n_heads != getattr(config, names["heads"]) \
            and getattr(config, "head_dim", None) is None:
        return UNEXPRESSIBLE.format(why="its config derives the head size from the number of heads, so fewer heads "
                                        "of the same size cannot be written in it")
    if names["layers"]:
        setattr(config, names["layers"], len(blocks))
    if names["heads"] and not layout.fixed_heads:
        setattr(config, names["heads"], n_heads)
        if len(kv_heads) == 1 and getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = next(iter(kv_heads))
    if names["ffn"]:
        setattr(config, names["ffn"], n_ffn)
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and None not in original:
        config.layer_types = [types[i] for i in original]
    for i, block in enumerate(blocks):  # cache indices: 0..n-1 over the blocks kept
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = i
    return None
