"""Coupling rules for hand-written attention: splitting channels into heads, batched matmuls
across heads, and merging heads back.

A channel group split by ``x.view(B, T, -1, head_dim)`` is tracked along its heads axis with
``head = head_dim`` channels per index, so query, key and value are tied by the products between
them and shrink by whole heads; ``reshape(B, T, -1)`` turns heads back into channels. Head counts
given as a literal (``view(B, T, 8, 64)``) cannot follow a smaller width, so those are frozen by
the caller. The products' multiply-adds scale with the number of heads and are recorded so that
counts match what runs.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch.fx as fx

from torch import nn

from onefit.graph.plan import LayerPlan, OpCost, StagePlan


def _dynamic(size) -> bool:
    return size == -1 or isinstance(size, fx.Node)


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def split_heads(walker, chan, in_shape: tuple, out_shape: tuple, sizes: list):
    """(..., C) -> (..., H, d) with H given as -1: the channels become heads of d channels."""
    if chan.axis != len(in_shape) - 1 or chan.unit != 1 or chan.head != 1:
        return None
    if len(out_shape) != len(in_shape) + 1 or tuple(out_shape[:-2]) != tuple(in_shape[:-1]):
        return None
    d = out_shape[-1]
    if out_shape[-2] * d != in_shape[-1] or len(sizes) != len(out_shape) or not _dynamic(sizes[-2]):
        return None
    walker.mark_heads(chan.group, d)
    return replace(chan, axis=len(out_shape) - 2, head=d)


def merge_heads(chan, in_shape: tuple, out_shape: tuple, sizes: list):
    """(..., H, d) -> (..., H*d) with the merged size given as -1: heads become channels again."""
    if chan.head == 1 or chan.axis != len(in_shape) - 2 or len(out_shape) != len(in_shape) - 1:
        return None
    if tuple(out_shape[:-1]) != tuple(in_shape[:-2]) or len(sizes) != len(out_shape) or not _dynamic(sizes[-1]):
        return None
    return replace(chan, axis=len(out_shape) - 1, head=1)


def _scaling_group(chan) -> int | None:
    """The group an op's cost scales with; None (a fixed cost) for a concatenation, which the
    union has frozen whole."""
    return None if chan.segments else chan.group


def _batch_axis_from_end(chan, shape: tuple) -> int | None:
    """How far from the end the chan's axis is, if it is a batch axis of a matmul (not the last two)."""
    k = len(shape) - chan.axis
    return k if k > 2 else None


def matmul(walker, node: fx.Node, shape) -> object:
    """a @ b batched over heads: ties a's and b's groups; the result keeps the heads axis."""
    a, b = node.args[:2]
    ca, cb = walker.chan.get(a), walker.chan.get(b)
    if ca is None and cb is None:
        return None
    ka = _batch_axis_from_end(ca, shape(a)) if ca else None
    kb = _batch_axis_from_end(cb, shape(b)) if cb else None
    if ca is None or cb is None or ka is None or ka != kb or ca.head != cb.head:
        return walker.unknown(node, "matmul that mixes channels")
    walker.union(ca, cb, f"matmul ({node.name})")
    out = shape(node)
    walker.ops.append(OpCost(_owner(node), _scaling_group(ca), math.prod(out[1:]) * shape(a)[-1]))
    return replace(ca, axis=len(out) - ka)


def attention(walker, node: fx.Node, shape) -> object:
    """F.scaled_dot_product_attention(q, k, v): ties q, k and v; two products of T x S x d per head."""
    q, k, v = node.args[:3]
    chans = [walker.chan.get(t) for t in (q, k, v)]
    if all(c is None for c in chans):
        return None
    axes = {_batch_axis_from_end(c, shape(t)) if c else None for c, t in zip(chans, (q, k, v))}
    if None in chans or len(axes) != 1 or None in axes or len({c.head for c in chans}) != 1:
        return walker.unknown(node, "attention over channels it cannot follow")
    walker.union(chans[0], chans[1], f"attention ({node.name})")
    walker.union(chans[0], chans[2], f"attention ({node.name})")
    qs, ks = shape(q), shape(k)
    walker.ops.append(OpCost(_owner(node), _scaling_group(chans[0]), 2 * math.prod(qs[1:-1]) * ks[-2] * qs[-1]))
    return chans[0]


def transformer_encoder(walker, node: fx.Node, mod: nn.TransformerEncoder, shape, kept_whole) -> None:
    """nn.TransformerEncoder, read off its layers (torch.fx cannot trace their fused-path checks):
    each layer's attention shrinks by heads (with a causal or padding mask, the same for every
    head) and its FFN by width; its layers are a depth stage; the model width (d_model) stays."""
    name = node.target
    call = {**dict(zip(("src", "mask", "src_key_padding_mask", "is_causal"), node.args)), **node.kwargs}
    src = call["src"]
    walker.freeze(walker.chan.get(src), f"{name}: an nn.TransformerEncoder keeps its model width (d_model)")
    layers = list(mod.layers)
    if not all(type(layer) is nn.TransformerEncoderLayer and layer.self_attn._qkv_same_embed_dim
               and layer.self_attn.bias_k is None and not layer.self_attn.add_zero_attn for layer in layers):
        walker.layers[name] = LayerPlan(name, "other", None, None,
                                        reason=f"{name}: layers other than plain nn.TransformerEncoderLayer")
        return walker.unknown(node, "an nn.TransformerEncoder of other layers")
    why = kept_whole(call.get("mask"), shape(call.get("mask")), call.get("is_causal"))
    tokens = shape(src)[1 if layers[0].self_attn.batch_first else 0]
    options = {"need_weights": False, "average_attn_weights": True,  # as the layer calls its attention
               # the encoder and its layers hand their attention masks converted to floats
               "attn_mask": "float" if call.get("mask") is not None else None,
               "key_padding_mask": "float" if call.get("src_key_padding_mask") is not None else None}
    for i, layer in enumerate(layers):
        prefix, attn = f"{name}.layers.{i}", layer.self_attn
        if why:
            walker.layers[f"{prefix}.self_attn"] = LayerPlan(f"{prefix}.self_attn", "other", None, None,
                                                             reason=f"{prefix}.self_attn: {why}")
        else:
            heads = walker.new_group(attn.embed_dim)
            walker.mark_heads(heads, attn.head_dim)
            walker.layers[f"{prefix}.self_attn"] = LayerPlan(f"{prefix}.self_attn", "mha", None, heads, positions=tokens,
                                                             in_positions=tokens, options=options)
        ffn = walker.new_group(layer.linear1.out_features)
        walker.layers[f"{prefix}.linear1"] = LayerPlan(f"{prefix}.linear1", "linear", None, ffn, positions=tokens,
                                                       in_positions=tokens, in_fixed="the encoder's model width")
        walker.layers[f"{prefix}.linear2"] = LayerPlan(f"{prefix}.linear2", "linear", ffn, None, positions=tokens,
                                                       in_positions=tokens)
    walker.extra_stages.append(StagePlan(f"{name}.layers", len(layers), 1))
    return None  # its output keeps the model width
