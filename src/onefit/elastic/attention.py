"""Elastic ``nn.MultiheadAttention``: the first ``active_out / head_dim`` heads.

The embedding width stays whole; queries, keys and values keep their first heads and the output
projection reads only those. A smaller head count cannot be a plain ``nn.MultiheadAttention``
(its inner width must equal its embedding width), so extraction builds the same computation from
plain ``nn.Linear`` layers and traces it into a ``torch.fx.GraphModule``: plain torch, no onefit.

Masks as ``nn.MultiheadAttention`` takes them: ``attn_mask`` (T, S) and ``key_padding_mask``
(B, S), boolean (True: not attended) or additive floats; such a mask is the same for every head,
so fewer heads see the same mask. A mask with a per-head axis ((B * heads, T, S)) cannot follow
fewer heads: the coupling analysis keeps that attention whole. ``is_causal`` is a hint that
``attn_mask`` is the causal mask, as in torch, so the mask itself is used. The extracted module
takes the masks the traced call passed, and refuses one it was traced without.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register


def mask_kind(mask) -> str | None:
    """How a mask is given: "bool" (True: not attended), "float" (added to the scores) or None."""
    return None if mask is None else "bool" if mask.dtype == torch.bool else "float"


def _additive(mask, kind: str, dtype):
    """A mask as numbers added to the scores, as torch converts it: -inf where a boolean mask is True."""
    if kind == "bool":  # masked_fill refuses a float mask: the extracted module cannot misread one
        return torch.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))
    return -(-mask)  # a float mask as it is; negation refuses a boolean one


def _mask(attn_mask, key_padding_mask, dtype, kinds):
    """One additive mask over (B, heads, T, S), or None; the same for every head. ``kinds``:
    ``mask_kind`` of each (the extracted module's are fixed when it is traced)."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, kinds[0], dtype)[None, None]  # (1, 1, T, S)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, kinds[1], dtype)[:, None, None, :]  # (B, 1, 1, S)
        mask = padding if mask is None else mask + padding
    return mask


def attend(q, k, v, heads: int, head_dim: int, dropout: float, training: bool, mask=None):
    """Scaled dot-product attention over ``heads`` heads; returns the merged output and weights."""
    b, t, s = q.size(0), q.size(1), k.size(1)
    q = q.reshape(b, t, heads, head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
    k = k.reshape(b, s, heads, head_dim).transpose(1, 2)
    v = v.reshape(b, s, heads, head_dim).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (B, heads, T, S)
    if mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    weights = F.dropout(weights, dropout, training)
    return (weights @ v).transpose(1, 2).reshape(b, t, heads * head_dim), weights


class _SmallerAttention(nn.Module):
    """What a sub-model's attention computes, in plain layers; traced, then thrown away."""

    def __init__(self, q, k, v, out, heads, head_dim, batch_first, dropout, options):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q, k, v, out
        self.heads, self.head_dim, self.batch_first, self.dropout = heads, head_dim, batch_first, dropout
        self.need_weights, self.average = options["need_weights"], options["average_attn_weights"]
        self.mask_kinds = options.get("attn_mask"), options.get("key_padding_mask")

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q = self.q_proj(query)
        out, weights = attend(q, self.k_proj(key), self.v_proj(value), self.heads, self.head_dim, self.dropout,
                               self.training, _mask(attn_mask, key_padding_mask, q.dtype, self.mask_kinds))
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not self.need_weights:
            return out, None
        return out, weights.mean(1) if self.average else weights


@register(nn.MultiheadAttention)
class ElasticMultiheadAttention(ElasticLayer, nn.Module):
    coupling = "attention"

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.embed_dim, plain.embed_dim  # the embedding width in, the heads' width out

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        """n_out: the heads' width; positions: (query tokens, key tokens)."""
        embed, (t, s) = self.embed_dim, positions
        bias = self.in_proj_bias is not None
        params = 4 * embed * n_out + bias * 3 * n_out + (self.out_proj.bias is not None) * embed
        return params, embed * n_out * (t + 2 * s) + 2 * t * s * n_out + n_out * embed * t

    active_out: int | None = None  # active heads x head_dim; None: every head

    @classmethod
    def from_plain(cls, plain: nn.MultiheadAttention) -> "ElasticMultiheadAttention":
        if not plain._qkv_same_embed_dim or plain.bias_k is not None or plain.add_zero_attn:
            raise TypeError("elastic attention needs equal q/k/v widths, no bias_k/bias_v and no zero attention")
        layer = cls()
        layer.in_proj_weight, layer.in_proj_bias, layer.out_proj = plain.in_proj_weight, plain.in_proj_bias, plain.out_proj
        layer.embed_dim, layer.num_heads, layer.head_dim = plain.embed_dim, plain.num_heads, plain.head_dim
        layer.batch_first, layer.dropout = plain.batch_first, plain.dropout
        layer.call_options = {"need_weights": True, "average_attn_weights": True}  # set from the traced call
        return layer

    # torch's fused encoder-layer path (nn.TransformerEncoderLayer in eval) would run every head
    # from in_proj_weight; this flag is one it checks to take the standard path through forward.
    _qkv_same_embed_dim = False

    def _projection(self, part: int, width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        start = part * self.embed_dim
        bias = None if self.in_proj_bias is None else self.in_proj_bias[start : start + width]
        return self.in_proj_weight[start : start + width], bias

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if attn_mask is not None and attn_mask.dim() != 2:
            raise ValueError(f"elastic attention takes an attn_mask of (T, S), the same for every head; got shape "
                             f"{tuple(attn_mask.shape)} (onefit keeps an attention with a per-head mask whole)")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal is a hint that attn_mask is the causal mask; pass the mask too, as torch asks")
        width = self.embed_dim if self.active_out is None else self.active_out
        if not self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q, k, v = (F.linear(x, *self._projection(i, width)) for i, x in enumerate((query, key, value)))
        kinds = mask_kind(attn_mask), mask_kind(key_padding_mask)
        out, weights = attend(q, k, v, width // self.head_dim, self.head_dim, self.dropout, self.training,
                               _mask(attn_mask, key_padding_mask, q.dtype, kinds))
        out = F.linear(out, self.out_proj.weight[:, :width], self.out_proj.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights

    def _linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def to_plain(self, in_size: int, out_size: int) -> nn.Module:
        q, k, v = (self._linear(*self._projection(i, out_size)) for i in range(3))
        out = self._linear(self.out_proj.weight[:, :out_size], self.out_proj.bias)
        smaller = _SmallerAttention(q, k, v, out, out_size // self.head_dim, self.head_dim, self.batch_first,
                                    self.dropout, self.call_options)
        # A mask the traced call did not pass becomes a constant None: passing one to the extracted
        # module is an error, never a silently unmasked attention. need_weights is fixed to the
        # traced call's.
        options = self.call_options
        concrete = {name: None for name in ("attn_mask", "key_padding_mask") if not options.get(name)}
        traced = fx.GraphModule(smaller, fx.symbolic_trace(smaller, concrete_args=concrete).graph, "SmallerAttention")
        # what nn.TransformerEncoder(Layer) read off their attention before choosing a path: the
        # standard one, through this module's forward
        traced.batch_first, traced.in_proj_bias, traced._qkv_same_embed_dim = self.batch_first, None, False
        traced.attention_heads = (out_size // self.head_dim, self.head_dim)  # read by onefit.continual
        return traced

    def channel_scores(self) -> torch.Tensor:
        w = self.in_proj_weight.detach().abs().sum(1).view(3, -1)  # (q|k|v, embed)
        return w.sum(0)

    def permute_out(self, order: torch.Tensor) -> None:
        rows = torch.cat([part * self.embed_dim + order for part in range(3)])
        self.in_proj_weight.copy_(self.in_proj_weight[rows])
        if self.in_proj_bias is not None:
            self.in_proj_bias.copy_(self.in_proj_bias[rows])
        self.out_proj.weight.copy_(self.out_proj.weight[:, order])

    def permute_in(self, rows: torch.Tensor) -> None:
        raise AssertionError("the embedding width of an attention is kept whole")


def standard_paths_(module: nn.Module) -> None:
    """Keep every ``nn.TransformerEncoder`` in ``module`` off its nested-tensor path (in eval with
    a padding mask it packs the batch and runs fused kernels over every head); an elastic
    attention runs on the standard path. The same computation, one flag of the encoder."""
    for m in module.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False
