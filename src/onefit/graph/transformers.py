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
``num_key_value_groups`` follows the choice. With ``ElasticConfig(kv_heads=...)`` whole
key/value groups go too, as LLM-Pruner prunes them (a ``kv`` dimension counting key/value heads:
k_proj and v_proj keep their first heads, q_proj its first segments, o_proj its first parts).

>>> sorted(LAYOUTS)
['bert', 'distilbert', 'gpt2', 'llama', 'phi3', 'vit']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from onefit.graph.plan import Group, LayerPlan, Plan, StagePlan
from onefit.graph.stream import Stream, find_stream, is_norm

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
    fixed_stream: str | None = None  # why its hidden size (the residual stream) cannot shrink, if it cannot
    heads_attr: str | None = None  # the attention's head count, where its forward reads one (set to the active heads)

    @property
    def fused(self) -> int:
        """Parts of the query projection's outputs: 3 when one projection holds q, k and v."""
        return 3 if len(self.qkv) == 1 else 1

    def projections(self) -> list[str]:
        """Every projection of a block, relative to the block."""
        return [f"{self.attention}.{q}" for q in self.qkv] + [self.out, *self.ffn_in, self.ffn_out]


ENCODER_STREAM = ("the hidden size of {} models is kept whole (it shrinks in decoders: the Llama family, GPT-2, "
                  "Phi-3)")


LAYOUTS = {
    "bert": Layout("attention.self", ("query", "key", "value"), "attention.output.dense", ("intermediate.dense",),
                   "output.dense", "attention_head_size", fixed_stream=ENCODER_STREAM.format("BERT-style encoder")),
    "vit": Layout("attention", ("q_proj", "k_proj", "v_proj"), "attention.o_proj", ("mlp.fc1",), "mlp.fc2", "head_dim",
                  fixed_stream=ENCODER_STREAM.format("ViT")),
    # GPT-2: one fused q|k|v projection (transformers' Conv1D), split by the attention's split_size
    "gpt2": Layout("attn", ("c_attn",), "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj", "head_dim"),
    # Llama, Mistral, Qwen2, Gemma, SmolLM, ...: a gated MLP, RMSNorm, rotary positions
    "llama": Layout("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj", ("mlp.gate_proj", "mlp.up_proj"),
                    "mlp.down_proj", "head_dim"),
    "distilbert": Layout("attention", ("q_lin", "k_lin", "v_lin"), "attention.out_lin", ("ffn.lin1",), "ffn.lin2",
                         "attention_head_size", fixed_stream=ENCODER_STREAM.format("DistilBERT")),
    # Phi-3: q|k|v fused and split at offsets its config fixes; gate|up fused and split in halves,
    # each half keeping its first channels
    "phi3": Layout("self_attn", ("qkv_proj",), "self_attn.o_proj", ("mlp.gate_up_proj",), "mlp.down_proj", "head_dim",
                   fixed_heads="its fused qkv_proj is split at offsets the model's config fixes "
                               "(num_attention_heads x head_dim); kept whole", ffn_segments=2),
}
LISTS = ("layer", "layers", "h")  # the attribute holding an encoder's blocks
HIDDEN = "the hidden size (the residual stream) is kept whole"


def _layout(block: nn.Module) -> Layout | None:
    names = {n for n, _ in block.named_modules()}
    return next((layout for layout in LAYOUTS.values() if set(layout.projections()) <= names), None)


def unknown_blocks(model: nn.Module) -> tuple[str, str] | None:
    """(path, block class) of a transformer's block list that no layout matches: a ModuleList
    under a block-list name whose blocks hold an attention module; None if there is none."""
    for path, module in model.named_modules():
        for attr in LISTS:
            blocks = module._modules.get(attr)
            if isinstance(blocks, nn.ModuleList) and len(blocks) and not _layout(blocks[0]) and any(
                    "attn" in n or "attention" in n for n, _ in blocks[0].named_modules()):
                return (f"{path}.{attr}" if path else attr), type(blocks[0]).__name__
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


def linear_shapes(model: nn.Module, example_inputs: tuple) -> tuple[dict[str, tuple[tuple, tuple]], dict[str, bool]]:
    """(input shape, output shape) of every linear layer in one forward on the example, and
    whether each reads (a view of) a norm's output, as a head reads the final norm's; for a
    model on the meta device, which cannot run transformers' data-dependent mask code, every
    linear layer is taken to see the example's positions (a sequence of token ids) and to read a
    norm's output if its input has the size of one."""
    if on_meta(model):
        positions = tuple(example_inputs[0].shape)
        sizes = {m.weight.shape[0] for m in model.modules() if is_norm(m)}
        return ({name: ((*positions, _in_features(m)), (*positions, _out_features(m)))
                 for name, m in model.named_modules() if _is_linear(m)},
                {name: _in_features(m) in sizes for name, m in model.named_modules() if _is_linear(m)})
    # norm outputs are kept until the forward ends: a freed one's memory could be reused by a
    # later tensor, which would then look like a view of it
    shapes, storage, normed, hooks = {}, {}, [], []

    def record(name, m, i, o):
        shapes[name] = (tuple(i[0].shape), tuple(o.shape))
        storage[name] = i[0].untyped_storage().data_ptr()

    for name, module in model.named_modules():
        if _is_linear(module):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o)))
        elif is_norm(module):
            hooks.append(module.register_forward_hook(lambda m, i, o: normed.append(o)))
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    pointers = {o.untyped_storage().data_ptr() for o in normed}
    return shapes, {name: ptr in pointers for name, ptr in storage.items()}


def encoder_plan(model: nn.Module, example_inputs: tuple) -> Plan | None:
    """A plan for ``model`` if it holds a known transformer encoder, else None."""
    encoders = find_encoders(model)
    if not encoders:
        return None
    shapes, reads = linear_shapes(model, example_inputs)
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

    stages, bindings, notes = [], [], []
    for path in encoders:
        blocks = model.get_submodule(path)
        size = _out_features(blocks[0].get_submodule(_layout(blocks[0]).out))
        parts = {f"{path}.{i}.{p}" for i, block in enumerate(blocks) for p in _layout(block).projections()}
        stream = find_stream(model, path, size, parts, reads, _layout(blocks[0]).fixed_stream) \
            if len(encoders) == 1 else "a model with several block lists"
        why = None if isinstance(stream, Stream) else f"{HIDDEN}: {stream}"
        if why:
            notes.append(f"{path}: {why}")
        hidden = new_group(size, frozen=why, label=path, kind="hidden")
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
                # whole key/value heads, each with its query heads (ElasticConfig(kv_heads=...))
                kv = new_group(_out_features(model.get_submodule(qkv[1])), multiple=head_size, kind="kv",
                               label=f"{b}.{layout.attention}", producers=qkv[1:], tie=path)
                linear(qkv[0], hidden, heads, segments=kv_heads)
                layers[qkv[0]].segment_group = kv
                for name in qkv[1:]:
                    linear(name, hidden, kv)
                out = f"{b}.{layout.out}"
                linear(out, None, hidden)
                layers[out].in_segments = ((heads, per_kv),) * kv_heads  # each group's first heads
                layers[out].segment_group = kv
                bindings.append((f"{b}.{layout.attention}", "num_key_value_groups", heads, head_size))
            else:
                heads = new_group(query_channels, multiple=head_size, kind="heads", label=f"{b}.{layout.attention}",
                                  producers=qkv, tie=path)
                for name in qkv:
                    linear(name, hidden, heads, segments=fused)
                if fused > 1:
                    bindings.append((f"{b}.{layout.attention}", "split_size", heads, 1))
                if layout.heads_attr:
                    bindings.append((f"{b}.{layout.attention}", layout.heads_attr, heads, head_size))
                linear(f"{b}.{layout.out}", heads, hidden)
            ffn_in = [f"{b}.{name}" for name in layout.ffn_in]
            ffn = new_group(_out_features(model.get_submodule(ffn_in[0])) // layout.ffn_segments, producers=ffn_in,
                            tie=f"{path}.ffn")
            for name in ffn_in:
                linear(name, hidden, ffn, segments=layout.ffn_segments)
            linear(f"{b}.{layout.ffn_out}", ffn, hidden)
        if isinstance(stream, Stream):
            _bind_stream(stream, hidden, layers, linear)
        groups[hidden].producers = [n for n, layer in layers.items() if layer.out_group == hidden and layer.kind != "norm"]
        stages.append(StagePlan(path, len(blocks), 1))
    for name in shapes:  # other Linear layers (poolers, heads): whole, but their MACs count
        if name not in layers:
            linear(name, None, None)
    return Plan(groups, layers, stages, notes, bindings=bindings)


def _bind_stream(stream: Stream, hidden: int, layers: dict, linear) -> None:
    """The stream's embeddings write the hidden group, its norms pass it, its heads read it."""
    for name in stream.embeddings:
        layers[name] = LayerPlan(name, "embedding", None, hidden, in_fixed="token ids")
    for name in stream.norms:
        layers[name] = LayerPlan(name, "norm", hidden, hidden)
    for name in stream.readers:
        linear(name, hidden, None)


# The config attributes that say how many blocks, heads and FFN channels a model has, by name
# across architectures (Llama / BERT, GPT-2, DistilBERT); the first one a config has is used.
CONFIG_NAMES = {"layers": ("num_hidden_layers", "n_layer", "n_layers"),
                "heads": ("num_attention_heads", "n_head", "n_heads"),
                "ffn": ("intermediate_size", "n_inner", "hidden_dim"),
                "hidden": ("hidden_size", "n_embd", "dim")}
UNEXPRESSIBLE = ("a transformers config cannot describe this sub-model ({why}); its config still describes the "
                 "original, so save_pretrained would not reload it (ElasticConfig(uniform=True) gives sub-models "
                 "a config can describe)")


def match_config_(model: nn.Module) -> str | None:
    """Make an extracted transformers model's config describe its blocks (their number, query
    heads and FFN width; the layers' cache indices and per-layer types follow the blocks kept), so
    ``save_pretrained`` writes a model ``from_pretrained`` reloads. Returns why it cannot, or None
    (also for a model that is not a transformers model)."""
    from onefit.graph.mamba import match_mamba_config_

    config = getattr(model, "config", None)
    encoders = find_encoders(model) if config is not None and hasattr(model, "save_pretrained") else []
    if not encoders and config is not None and hasattr(model, "save_pretrained"):
        why = match_mamba_config_(model)
        return why and UNEXPRESSIBLE.format(why=why)
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
    n_hidden = _out_features(blocks[0].get_submodule(layout.out))
    if names["heads"] and not layout.fixed_heads and n_heads != getattr(config, names["heads"]) \
            and getattr(config, "head_dim", None) is None:
        return UNEXPRESSIBLE.format(why="its config derives the head size from the number of heads, so fewer heads "
                                        "of the same size cannot be written in it")
    if names["hidden"] and n_hidden != getattr(config, names["hidden"]) and getattr(config, "head_dim", None) is None:
        return UNEXPRESSIBLE.format(why="its config derives the head size from the hidden size, so a narrower hidden "
                                        "size with heads of the same size cannot be written in it")
    if names["hidden"]:
        setattr(config, names["hidden"], n_hidden)
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
