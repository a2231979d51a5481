"""Channel coupling by tracing: walk a ``torch.fx`` graph and union the channels that must agree.

Every tensor in the graph either carries a tracked channel axis (``_Chan``: its group, which axis,
and how many features each channel spans after a flatten) or is untracked (``None``): a fixed-size
tensor such as the model's input. Layers that produce channels start a new group; norms, pooling,
activations and depthwise convolutions pass the group through; a residual add unions two groups;
anything this walker does not understand *freezes* the groups it touches (they keep full size,
with the reason recorded). So an unknown op can cost coverage but never produce a wrong slice.

>>> import torch
>>> class Residual(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.inp, self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
...     def forward(self, x):
...         h = self.inp(x)
...         return self.out(h + self.b(torch.relu(self.a(h))))  # the add ties inp's and b's outputs
>>> plan = trace_plan(Residual(), (torch.randn(1, 4),))
>>> plan.layers["inp"].out_group == plan.layers["b"].out_group != plan.layers["a"].out_group
True
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
from torch import nn

from onefit.elastic.registry import elastic_type_for
from onefit.graph import attention
from onefit.graph.plan import Group, LayerPlan, OpCost, Plan, StagePlan
from onefit.graph.stages import find_stages
from onefit.elastic.ties import split_name, tied_parameters
from onefit.graph.trace import TraceError, trace  # noqa: F401  (TraceError is part of this module's API)
from onefit.graph.trace import full_index, node_shape as _shape, op_name as _op_name


@dataclass(frozen=True)
class _Chan:
    group: int | None  # None for a concatenation, which has no single group
    axis: int
    unit: int = 1  # features per channel along the axis (a flattened C x H x W map has H*W)
    head: int = 1  # channels per index along the axis (d after a split into heads of d channels)
    # A concatenation: ((group or None for a fixed part, full size), ...)
    segments: tuple = ()


_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Softmax, nn.LogSoftmax,
)
_PASS_FUNCS = {
    "relu", "relu_", "relu6", "gelu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid",
    "leaky_relu", "elu", "mish", "dropout", "contiguous", "clone", "neg", "abs", "exp", "sqrt",
    "softmax", "log_softmax", "hardtanh", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
}
_BINARY_FUNCS = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "mul_"}
_REDUCE_FUNCS = {"mean", "sum", "amax", "amin"}
_SHAPE_FUNCS = {"size", "dim", "getattr"}  # give non-tensors; reading a shape constrains nothing


def _group(chan: _Chan | None) -> int | None:
    """The single group a layer reads or writes; None when fixed or when it is a concatenation."""
    return None if chan is None or chan.segments else chan.group


def _weight_axes(layer: LayerPlan) -> tuple[int | None, int | None] | None:
    """The groups on a layer's weight axes (rows, columns), for the layers whose weights can be
    tied: a Linear (outputs, inputs) and an embedding (vocabulary, columns); None for others."""
    if layer.kind == "linear" and layer.in_unit == 1 and not layer.in_segments:
        return layer.out_group, layer.in_group
    if layer.kind == "embedding":
        return None, layer.out_group
    return None


def masks_kept_whole(attn_mask, shape: tuple | None, is_causal) -> str | None:
    """Why an attention called with these masks cannot shrink by heads, or None: a mask the same
    for every head ((T, S), or a key padding mask) follows fewer heads; one with a per-head axis
    ((B * heads, T, S)) does not."""
    if attn_mask is not None and not isinstance(attn_mask, fx.Node):
        return "called with an attn_mask onefit cannot see (not a tensor of the graph)"
    if attn_mask is not None and (shape is None or len(shape) != 2):
        return f"its attn_mask has a per-head axis (shape {shape}), which cannot follow fewer heads; kept whole"
    if is_causal and attn_mask is None:
        return "is_causal without an attn_mask"
    return None


def _mask_kind(node) -> str | None:
    """"bool" or "float": how the traced call gives a mask (its dtype on the example); None: no mask."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return None if meta is None else "bool" if meta.dtype == torch.bool else "float"


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if _shape(n) else None)
    return found


class _Walker:
    def __init__(self, traced: fx.GraphModule):
        self.modules = dict(traced.named_modules())
        self.parent: list[int] = []
        self.size: list[int] = []
        self.multiple: dict[int, int] = {}
        self.frozen: dict[int, str] = {}
        self.chan: dict[fx.Node, _Chan | None] = {}
        self.heads: dict[int, int] = {}  # group -> channels per head, for groups split into heads
        self.ops: list[OpCost] = []
        self.layers: dict[str, LayerPlan] = {}
        self.notes: list[str] = []
        self.why_fixed: dict[fx.Node, str] = {}  # why an untracked tensor has a fixed width
        self.extra_stages: list[StagePlan] = []  # block lists read off modules (nn.TransformerEncoder)

    # -- union-find over groups --------------------------------------------------------------
    def new_group(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def root(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def mark_heads(self, group: int, head_dim: int) -> None:
        root = self.root(group)
        self.heads[root] = head_dim
        self.multiple[root] = math.lcm(self.multiple.get(root, 1), head_dim)

    def freeze(self, chan: _Chan | None, reason: str) -> None:
        if chan is None:
            return
        for group in [g for g, _ in chan.segments if g is not None] if chan.segments else [chan.group]:
            self.frozen.setdefault(self.root(group), reason)

    def union(self, a: _Chan, b: _Chan, where: str) -> None:
        if a.segments or b.segments:  # two concatenations, or one and a plain tensor: keep all whole
            self.freeze(a, f"{where}: joins a concatenation")
            self.freeze(b, f"{where}: joins a concatenation")
            return
        ra, rb = self.root(a.group), self.root(b.group)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(a, f"{where}: joins {self.size[ra]} and {self.size[rb]} channels")
            self.freeze(b, f"{where}: joins {self.size[ra]} and {self.size[rb]} channels")
            return
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.heads:
            self.heads.setdefault(ra, self.heads.pop(rb))
        self.multiple[ra] = math.lcm(self.multiple.get(ra, 1), self.multiple.pop(rb, 1))

    # -- the walk ------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        if node.op in ("placeholder", "get_attr"):
            self.chan[node] = None  # inputs and constants keep their size
            self.why_fixed[node] = "model input" if node.op == "placeholder" else "a constant tensor"
        elif node.op == "output":
            for arg in _tensor_args(node):
                self.freeze(self.chan.get(arg), "model output")
        elif node.op == "call_module":
            first = self.layers.get(node.target)
            self.chan[node] = self.visit_module(node, self.modules[node.target])
            if first is not None:
                self.freeze_shared(node.target, first)
            self.record_fixed_input(node)
        else:
            self.chan[node] = self.visit_function(node, _op_name(node))
        if self.chan.get(node) is None and node not in self.why_fixed:  # fixed because its input is
            self.why_fixed[node] = next((self.why_fixed[a] for a in _tensor_args(node) if a in self.why_fixed),
                                        "model input")

    def record_fixed_input(self, node: fx.Node) -> None:
        """Say why a layer's input width is fixed: the model input, an op onefit does not
        understand upstream, or its channels frozen by something else."""
        layer = self.layers.get(node.target)
        if layer is None or layer.in_group is not None or layer.in_segments or not node.args:
            return
        arg = node.args[0]
        chan = self.chan.get(arg) if isinstance(arg, fx.Node) else None
        if layer.kind == "mha":
            layer.in_fixed = "an attention keeps its embedding width"
        elif chan is not None:
            layer.in_fixed = self.frozen.get(self.root(chan.group), "its input channels cannot be sliced") \
                if not chan.segments else "reads a concatenation"
        elif isinstance(arg, fx.Node):
            layer.in_fixed = self.why_fixed.get(arg, "model input")

    def tie(self, tied: list[tuple[str, ...]]) -> None:
        """Layers holding one weight tensor shrink together: the groups on each axis of the
        tensor are one (an embedding's columns and a tied output layer's inputs); an axis fixed
        in one holder is fixed in all."""
        for names in tied:
            holders = [(n, self.layers.get(split_name(n)[0])) for n in names]
            axes = [(n, _weight_axes(layer) if layer and split_name(n)[1] == "weight" else None) for n, layer in holders]
            if any(a is None for _, a in axes):
                reason = f"tied weights {', '.join(names)} held by a layer onefit does not shrink"
                for g in {g for _, layer in holders if layer for g in (layer.in_group, layer.out_group)} - {None}:
                    self.freeze(_Chan(g, 0), reason)
                continue
            (first, first_axes), rest = axes[0], axes[1:]
            for name, groups in rest:
                for axis, (a, b) in enumerate(zip(first_axes, groups)):
                    if a is not None and b is not None:
                        self.union(_Chan(a, 0), _Chan(b, 0), f"tied weights {first} and {name}")
                    elif a is not None or b is not None:
                        self.freeze(_Chan(a if a is not None else b, 0),
                                    f"tied weights {first} and {name}: axis {axis} is fixed in one of them")

    def freeze_shared(self, name: str, first: LayerPlan) -> None:
        """A layer called twice (shared weights) keeps every width it touches whole."""
        reason = f"{name} is called more than once (shared weights)"
        for layer in (first, self.layers[name]):
            for g in (layer.in_group, layer.out_group):
                if g is not None:
                    self.frozen.setdefault(self.root(g), reason)

    def unknown(self, node: fx.Node, what: str) -> None:
        self.why_fixed[node] = f"output of {what} ({node.name})"
        touched = [a for a in _tensor_args(node) if self.chan.get(a) is not None]
        if touched:
            self.notes.append(f"{node.name}: {what}; its inputs keep full width")
        for arg in touched:
            self.freeze(self.chan[arg], f"used by {what} ({node.name})")
        return None

    def input_chan(self, node: fx.Node, axis: int, name: str, unit_ok: bool = False,
                   segments_ok: bool = False) -> _Chan | None:
        """The tracked channel of ``node``'s first input if it lies on ``axis``, else freeze it."""
        x = node.args[0] if node.args else None
        chan = self.chan.get(x) if isinstance(x, fx.Node) else None
        if chan is None:
            return None
        ndim = len(_shape(x))
        if chan.axis != axis % ndim or (chan.unit != 1 and not unit_ok) or chan.head != 1:
            self.freeze(chan, f"{name} reads another axis than the channels")
            return None
        if chan.segments and (not segments_ok or chan.unit != 1):
            self.freeze(chan, f"{name} cannot read a concatenation")
            return None
        return chan

    def visit_module(self, node: fx.Node, mod: nn.Module) -> _Chan | None:
        """A layer's rule comes from its elastic type (``coupling``, looked up in ``RULES``);
        weightless modules come from the tables of pass-through modules and flatten."""
        out_shape = _shape(node)
        elastic = elastic_type_for(mod)
        rule = RULES.get(getattr(elastic, "coupling", None))
        if rule is not None:
            return rule(self, node, mod, elastic, out_shape)
        if isinstance(mod, nn.TransformerEncoder):
            return attention.transformer_encoder(self, node, mod, _shape, masks_kept_whole)
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, mod.start_dim, mod.end_dim)
        if isinstance(mod, _PASS_MODULES):
            x = node.args[0]
            return self.chan.get(x) if len(_shape(x)) == len(out_shape) else self.unknown(node, type(mod).__name__)
        if any(True for _ in mod.parameters()):
            name = node.target
            self.layers[name] = LayerPlan(name, "other", None, None, reason=f"no elastic version of {type(mod).__name__}")
        return self.unknown(node, f"layer {type(mod).__name__}")

    # -- the rules an elastic layer names as its ``coupling`` ------------------------------------
    def linear_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> _Chan:
        """Reads its input's last axis, produces a new group of its outputs there."""
        name = node.target
        x = self.input_chan(node, -1, name, unit_ok=True, segments_ok=True)
        group = self.new_group(elastic.plain_sizes(mod)[1])
        in_positions = math.prod(_shape(node.args[0])[1:-1])
        self.layers[name] = LayerPlan(
            name, "linear", _group(x), group, x.unit if x else 1, math.prod(out_shape[1:-1]),
            in_positions=in_positions, in_segments=x.segments if x else (),
        )
        return _Chan(group, len(out_shape) - 1)

    def conv_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> _Chan | None:
        return self.visit_conv(node, mod, out_shape)

    def batch_norm_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> _Chan | None:
        """Passes the group on axis 1 through (a concatenation too)."""
        name = node.target
        x = self.input_chan(node, 1, name, segments_ok=True)
        self.layers[name] = LayerPlan(name, "norm", _group(x), _group(x), in_segments=x.segments if x else ())
        return x

    def layer_norm_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> _Chan | None:
        """Passes the group on the last axis through; a norm over more axes is kept whole."""
        name = node.target
        if len(mod.normalized_shape) != 1:
            self.layers[name] = LayerPlan(name, "other", None, None,
                                          reason=f"LayerNorm over {len(mod.normalized_shape)} dimensions")
            return self.unknown(node, f"layer {type(mod).__name__}")
        x = self.input_chan(node, -1, name)
        self.layers[name] = LayerPlan(name, "norm", x and x.group, x and x.group)
        return x

    def embedding_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> _Chan | None:
        """Token ids in, a new group of its columns out on the last axis."""
        name, why = node.target, elastic.refuses(mod)
        if why:
            self.layers[name] = LayerPlan(name, "other", None, None, reason=why)
            return self.unknown(node, f"layer {type(mod).__name__}")
        group = self.new_group(mod.embedding_dim)
        self.layers[name] = LayerPlan(name, "embedding", None, group, 1, math.prod(out_shape[1:-1]),
                                      in_fixed="token ids")
        return _Chan(group, len(out_shape) - 1)

    def attention_rule(self, node: fx.Node, mod: nn.Module, elastic: type, out_shape: tuple) -> None:
        return self.attention_module(node, mod)

    def attention_module(self, node: fx.Node, mod: nn.MultiheadAttention) -> None:
        """nn.MultiheadAttention: its heads form a group of their own; its embedding width stays."""
        name = node.target
        params = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
                  "is_causal")
        call = {**dict(zip(params, node.args)), **node.kwargs}
        for k in ("query", "key", "value"):
            if isinstance(call.get(k), fx.Node):
                self.freeze(self.chan.get(call[k]), f"{name}: an attention keeps its embedding width")
        supported = mod._qkv_same_embed_dim and mod.bias_k is None and not mod.add_zero_attn
        why = masks_kept_whole(call.get("attn_mask"), _shape(call.get("attn_mask")), call.get("is_causal"))
        if why or not supported or not all(isinstance(call.get(k), fx.Node) for k in ("query", "key", "value")):
            why = why or "an attention of a kind onefit does not shrink"
            self.layers[name] = LayerPlan(name, "other", None, None, reason=f"{name}: {why}")
            return None
        heads = self.new_group(mod.embed_dim)
        self.mark_heads(heads, mod.head_dim)
        q, k = _shape(call["query"]), _shape(call["key"])
        tokens = (lambda shape: shape[1] if mod.batch_first else shape[0])
        self.layers[name] = LayerPlan(
            name, "mha", None, heads, positions=tokens(q), in_positions=tokens(k),
            options={"need_weights": call.get("need_weights", True),
                     "average_attn_weights": call.get("average_attn_weights", True),
                     "attn_mask": _mask_kind(call.get("attn_mask")),
                     "key_padding_mask": _mask_kind(call.get("key_padding_mask"))},
        )
        return None  # the output is a tuple; what reads it sees a fixed width

    def visit_conv(self, node: fx.Node, mod: nn.Module, out_shape: tuple) -> _Chan | None:
        name, positions = node.target, math.prod(out_shape[2:])
        in_positions = math.prod(_shape(node.args[0])[2:])
        if mod.groups > 1 and mod.in_channels == mod.out_channels:
            x = self.input_chan(node, 1, name)
            if x is not None:
                root = self.root(x.group)
                self.multiple[root] = math.lcm(self.multiple.get(root, 1), mod.in_channels // mod.groups)
            self.layers[name] = LayerPlan(name, "conv_pass", x and x.group, x and x.group, 1, positions,
                                          in_positions=in_positions)
            return x
        x = self.input_chan(node, 1, name, segments_ok=mod.groups == 1)
        if mod.groups > 1:
            self.freeze(x, f"{name}: grouped convolution with unequal in/out widths")
            x = None
        group = self.new_group(mod.out_channels)
        if mod.groups > 1:
            self.frozen[group] = f"{name}: grouped convolution with unequal in/out widths"
        self.layers[name] = LayerPlan(name, "conv", _group(x), group, 1, positions, in_positions=in_positions,
                                      in_segments=x.segments if x else ())
        return _Chan(group, 1)

    def visit_function(self, node: fx.Node, op: str) -> _Chan | None:
        if op in _SHAPE_FUNCS or _shape(node) is None:
            return None if op in _SHAPE_FUNCS or not _tensor_args(node) else self.unknown(node, op)
        if op in _PASS_FUNCS:
            x = node.args[0]
            return self.chan.get(x) if len(_shape(x)) == len(_shape(node)) else self.unknown(node, op)
        if op in _BINARY_FUNCS or node.target in (operator.add, operator.mul, operator.sub, operator.truediv):
            return self.binary(node, op)
        if op in _REDUCE_FUNCS:
            return self.reduce(node, op)
        if op == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self.flatten(node, start, end)
        if op in ("view", "reshape"):
            return self.reshape(node, op)
        if op in ("cat", "concat", "concatenate"):
            return self.cat(node)
        if op in ("permute", "transpose"):
            return self.permute(node, op)
        if node.target is operator.getitem:
            return self.index(node)
        if op in ("matmul", "bmm") or node.target is operator.matmul:
            return attention.matmul(self, node, _shape)
        if op == "scaled_dot_product_attention":
            return attention.attention(self, node, _shape)
        return self.unknown(node, f"op {op}")

    def binary(self, node: fx.Node, op: str) -> _Chan | None:
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
        if len(tensors) == 1:
            return self.chan.get(tensors[0])
        a, b = tensors
        ca, cb = self.chan.get(a), self.chan.get(b)
        out_ndim = len(_shape(node))

        def channel_size(n: fx.Node, c: _Chan) -> int:
            return _shape(n)[c.axis]

        # Broadcasting aligns from the right, so compare axes counted from the end.
        if ca is not None and cb is not None and len(_shape(a)) - ca.axis == len(_shape(b)) - cb.axis:
            if channel_size(a, ca) == channel_size(b, cb) and ca.unit == cb.unit and ca.head == cb.head:
                self.union(ca, cb, f"{op} ({node.name})")
                return ca
        for this, other, c_this in ((a, b, ca), (b, a, cb)):
            # x * gate where the other operand broadcasts over the channels (size 1 there).
            if c_this is not None and len(_shape(this)) == out_ndim:
                axis_from_end = len(_shape(this)) - c_this.axis
                if len(_shape(other)) < axis_from_end or _shape(other)[-axis_from_end] == 1:
                    return c_this
        return self.unknown(node, f"{op} of tensors with different channel layouts")

    def reduce(self, node: fx.Node, op: str) -> _Chan | None:
        x = node.args[0]
        chan, ndim = self.chan.get(x), len(_shape(x))
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if chan is None:
            return None
        if dims is None:
            return self.unknown(node, f"{op} over all dimensions")
        dims = {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if chan.axis in dims or chan.unit != 1 or chan.head != 1:
            return self.unknown(node, f"{op} over the channels")
        return replace(chan, axis=chan.axis if keepdim else chan.axis - sum(d < chan.axis for d in dims))

    def index(self, node: fx.Node) -> _Chan | None:
        """``x[..., 4:]``, ``x[:, -1]``: indexing other axes passes the channels through (an int
        removes its axis, None adds one); indexing the channels themselves does not."""
        x, key = node.args
        chan = self.chan.get(x)
        if chan is None:
            return None
        ndim = len(_shape(x))
        key = full_index(key, ndim)
        if key is None:
            return self.unknown(node, "indexing by a tensor or by computed bounds")
        axes = [k for k in key if k is not None]  # one entry per input axis
        if axes[chan.axis] != slice(None):
            return self.unknown(node, "indexing the channels")
        before = key[:[i for i, k in enumerate(key) if k is not None][chan.axis]]
        axis = sum(1 for k in before if k is None or isinstance(k, slice))
        return replace(chan, axis=axis)

    def flatten(self, node: fx.Node, start: int, end: int) -> _Chan | None:
        x = node.args[0]
        chan, shape = self.chan.get(x), _shape(x)
        if chan is None:
            return None
        if chan.head != 1 or chan.segments:
            return self.unknown(node, "flatten of heads or of a concatenation")
        start, end = start % len(shape), end % len(shape)
        if start > chan.axis or end < chan.axis:
            return _Chan(chan.group, chan.axis - (end - start) * (start < chan.axis), chan.unit)
        if start == chan.axis:
            # (B, C, H, W) -> (B, C*H*W): channel c spans features [c*H*W, (c+1)*H*W).
            return _Chan(chan.group, chan.axis, chan.unit * math.prod(shape[start + 1 : end + 1]))
        return self.unknown(node, "flatten that merges dimensions before the channels")

    def reshape(self, node: fx.Node, op: str) -> _Chan | None:
        x = node.args[0]
        chan, in_shape, out_shape = self.chan.get(x), _shape(x), _shape(node)
        sizes = node.args[1:] if len(node.args) > 2 or not isinstance(node.args[1], (tuple, list)) else node.args[1]
        literal = [s for s in sizes[1:] if not isinstance(s, fx.Node)]
        if chan is None:
            return None
        if chan.segments:
            return self.unknown(node, f"{op} of a concatenation")
        # x.view(x.size(0), -1) after the channel axis 1 is a flatten; fixed sizes are not.
        if chan.axis == 1 and chan.head == 1 and len(out_shape) == 2 and out_shape[0] == in_shape[0] and literal == [-1]:
            return self.flatten(node, 1, -1)
        split = attention.split_heads(self, chan, in_shape, out_shape, list(sizes))
        merged = split or attention.merge_heads(chan, in_shape, out_shape, list(sizes))
        if merged is not None:
            return merged
        return self.unknown(node, f"{op} to a fixed shape {tuple(out_shape)}")

    def cat(self, node: fx.Node) -> _Chan | None:
        """torch.cat along the channels: the result is the inputs' groups side by side."""
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        out_ndim = len(_shape(node))
        segments = []
        for t in tensors:
            chan, size = self.chan.get(t), _shape(t)[dim % out_ndim]
            if chan is None:
                segments.append((None, size))  # a fixed-width part, e.g. the model's input
            elif chan.axis != dim % out_ndim or chan.unit != 1 or chan.head != 1:
                return self.unknown(node, "cat along another axis than the channels")
            else:
                segments += chan.segments or [(chan.group, size)]
        if all(g is None for g, _ in segments):
            return None
        return _Chan(None, dim % out_ndim, segments=tuple(segments))

    def permute(self, node: fx.Node, op: str) -> _Chan | None:
        x = node.args[0]
        chan, ndim = self.chan.get(x), len(_shape(x))
        if chan is None:
            return None
        if op == "transpose":
            d0, d1 = (a % ndim for a in node.args[1:3])
            axis = {d0: d1, d1: d0}.get(chan.axis, chan.axis)
        else:
            dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
            axis = [d % ndim for d in dims].index(chan.axis)
        return replace(chan, axis=axis)

    # -- result --------------------------------------------------------------------------------
    def plan(self, stages: list[StagePlan]) -> Plan:
        groups: dict[int, Group] = {}
        for layer in self.layers.values():
            layer.in_segments = tuple((None if g is None else self.root(g), n) for g, n in layer.in_segments)
            layer.in_group = None if layer.in_group is None else self.root(layer.in_group)
            layer.out_group = None if layer.out_group is None else self.root(layer.out_group)
            g = layer.out_group
            if g is not None and g not in groups:
                kind = "heads" if g in self.heads else "width"
                groups[g] = Group(g, self.size[g], self.multiple.get(g, 1), self.frozen.get(g), kind=kind)
            if g is not None and layer.kind in ("linear", "conv", "mha", "embedding"):
                groups[g].producers.append(layer.name)
        ops = [replace(op, group=None if op.group is None else self.root(op.group)) for op in self.ops]
        return Plan(groups, self.layers, stages, self.notes, ops)


RULES = {  # coupling name (an elastic layer's ``coupling``) -> the walker's rule
    "linear": _Walker.linear_rule,
    "conv": _Walker.conv_rule,
    "batch_norm": _Walker.batch_norm_rule,
    "layer_norm": _Walker.layer_norm_rule,
    "attention": _Walker.attention_rule,
    "embedding": _Walker.embedding_rule,
}


def trace_plan(model: nn.Module, example_inputs: tuple) -> Plan:
    """Trace ``model`` on ``example_inputs`` and return its width groups, layers and depth stages."""
    traced = trace(model, example_inputs)
    walker = _Walker(traced)
    for node in traced.graph.nodes:
        walker.visit(node)
    tied = tied_parameters(model)
    walker.tie(tied)
    stages = find_stages(model, traced, walker) + walker.extra_stages
    plan = walker.plan(stages)
    plan.tied = tied
    return plan
