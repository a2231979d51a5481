"""Continual inference: a model trained on clips, run one frame at a time with its weights unchanged.

``continual(module, example)`` reads ``module`` (an extracted sub-model, or any plain model) with
torch.fx and returns a :class:`Streaming` module whose ``forward_step(frame)`` gives, once it has
seen a window's worth of frames, exactly what ``module`` gives on the clip of the last
``window`` frames (``window`` is the example's length in time), while computing each layer's
output for the new frame only (Hedegaard, "Efficient Online Processing with Deep Neural
Networks", 2023). Each value in the model is one of:

- a *stream*: one new position per frame (convolutions and pooling over time without padding,
  anything acting on each position alone); kept for as many frames as later layers look back;
- the *window's* value: a reduction over time (global pooling), and everything after it;
- the *newest position only*: the output of attention over the window at its newest query
  (single-output attention: each frame's key and value are projected once and kept).

Strides in time need no skipping: a strided layer's outputs are computed at every frame, and
the layers after it look back by multiples of its stride. What cannot stream is refused with
the layer and the reason: padding in time (a padded clip's edges see zeros a stream never has),
attention whose every position is used later (each new frame changes every earlier output),
an op onefit cannot tell does not mix frames.

>>> import torch, onefit
>>> from onefit import continual
>>> model = onefit.zoo.temporal_cnn(in_channels=3, channels=8, blocks=2, stride=1, padding=False).eval()
>>> clip = torch.randn(1, 3, 16)
>>> stream = continual(model, clip)
>>> stream.window, stream.receptive_field, stream.delay
(16, 16, 0)
>>> outputs = [stream.forward_step(clip[:, :, t]) for t in range(16)]
>>> outputs[14] is None, torch.allclose(outputs[15], model(clip), atol=1e-5)
(True, True)
"""

from __future__ import annotations

import collections
import copy
import operator
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from onefit.elastic.attention import attend
from onefit.graph.trace import full_index, node_shape as _shape, op_name as _op_name


class NotStreamable(ValueError):
    """The model has a layer that cannot run one frame at a time; the message names it and why."""


@dataclass(frozen=True)
class _Info:
    kind: str  # "stream", "window" (a value of the whole window), "newest" (only the newest position), "const"
    axis: int | None = None  # the time axis (stream, newest)
    spacing: int = 1  # frames between neighbouring positions (the product of earlier strides)
    offset: int = 0  # frames from the window's newest frame back to this value's newest position
    length: int = 0  # positions in time of the value computed on a window


_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                      nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                      nn.Identity, nn.Softmax, nn.LogSoftmax)
_LAST_AXIS_MODULES = (nn.Linear, nn.LayerNorm, nn.RMSNorm)  # act on the last axis of each position
_POINTWISE_FUNCS = {"relu", "relu_", "relu6", "gelu", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid",
                    "leaky_relu", "elu", "mish", "dropout", "contiguous", "clone", "neg", "abs", "exp", "sqrt",
                    "hardtanh", "float", "to"}
_BINARY_FUNCS = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "add_", "mul_"}
_REDUCE_FUNCS = {"mean", "sum", "amax", "amin", "max", "min"}
_TEMPORAL = (nn.Conv1d, nn.Conv3d, nn.MaxPool1d, nn.AvgPool1d, nn.MaxPool3d, nn.AvgPool3d)


class Streaming(nn.Module):
    """``module`` run one frame at a time. ``forward(clip)`` is the offline model;
    ``forward_step(frame)`` takes one frame (the clip's shape without its time axis) and returns
    the output for the window ending at it, or None while fewer than ``receptive_field`` frames
    have arrived; ``forward_steps(clip)`` steps through a clip; ``clean_state()`` forgets the
    frames seen.

    ``window``: the clip length the model was traced at (the length of the window each output
    stands for); ``receptive_field``: the frames from the oldest to the newest that the output
    depends on; ``delay``: frames between the newest frame and the newest frame the output depends
    on (0: every output uses the frame just given).
    """

    def __init__(self, module: nn.Module, graph: fx.GraphModule, time_dim: int, window: int,
                 frame_shape: tuple, plan: list, start: dict, keep: dict, output_node: fx.Node,
                 receptive_field: int, delay: int, attention: nn.ModuleDict, infos: dict):
        super().__init__()
        self.module, self.attention = module, attention
        self.time_dim, self.window, self.frame_shape = time_dim, window, frame_shape
        self.receptive_field, self.delay = receptive_field, delay
        self._graph, self._plan, self._start, self._keep, self._output = graph, plan, start, keep, output_node
        self._infos = infos
        self.clean_state()

    def forward(self, clip: torch.Tensor) -> Any:
        return self.module(clip)

    def clean_state(self) -> None:
        self._frame = -1
        self._history: dict[fx.Node, collections.deque] = {n: collections.deque(maxlen=k) for n, k in self._keep.items()}
        self._steps = [(node, step, self._start[node], self._history.get(node)) for node, step in self._plan]

    def check_frame(self, frame: torch.Tensor) -> None:
        if not isinstance(frame, torch.Tensor) or tuple(frame.shape[1:]) != self.frame_shape:
            got = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise ValueError(f"forward_step takes one frame of shape (batch, {', '.join(map(str, self.frame_shape))}) "
                             f"(the clip without its time axis {self.time_dim}); got {got}")

    @torch.no_grad()
    def forward_step(self, frame: torch.Tensor) -> torch.Tensor | None:
        self.check_frame(frame)
        self._frame += 1
        t, now, history = self._frame, {}, self._history
        for node, step, start, kept in self._steps:
            if t >= start:
                value = now[node] = step(now, history, frame)
                if kept is not None:
                    kept.append(value)
        return now.get(self._output) if t >= self._start[self._output] else None

    def forward_steps(self, clip: torch.Tensor) -> torch.Tensor | None:
        """Step through ``clip`` frame by frame; the outputs of the steps that have one, stacked
        on a new last axis (None if none has)."""
        outputs = [self.forward_step(frame) for frame in clip.unbind(self.time_dim)]
        ready = [y for y in outputs if y is not None]
        return torch.stack(ready, -1) if ready else None

    def step_macs(self) -> int:
        """Multiply-accumulates of one step once the stream is full (torch's FLOP counter / 2),
        counted on zero frames; the frames seen so far are kept."""
        saved = self._frame, self._history, self._steps
        self.clean_state()
        frame = torch.zeros((1, *self.frame_shape))
        for _ in range(self._start[self._output]):
            self.forward_step(frame)
        try:
            return _macs(lambda: self.forward_step(frame))
        finally:
            self._frame, self._history, self._steps = saved

    def step_latency(self, repeats: int = 200, threads: int | None = None):
        """Latency of one step in a full stream (torch eager, batch 1, zero frames), as
        ``onefit.cost.latency.Latency`` with backend ``"streaming"``; the frames seen are kept."""
        from onefit.cost.latency import time_call, torch_threads

        saved = self._frame, self._history, self._steps
        self.clean_state()
        frame = torch.zeros((1, *self.frame_shape))
        threads = threads or torch.get_num_threads()
        try:
            with torch_threads(threads), torch.inference_mode():
                for _ in range(self._start[self._output]):
                    self.forward_step(frame)
                return time_call(lambda: self.forward_step(frame), batch=1, backend="streaming", threads=threads,
                                 repeats=repeats, warmup=max(2, repeats // 10))
        finally:
            self._frame, self._history, self._steps = saved

    def costs(self) -> dict:
        """Per-step and per-window MACs, receptive field and delay: what a report shows."""
        step, window = self.step_macs(), self.window_macs()
        return {"step_macs": step, "window_macs": window, "macs_ratio": window / max(step, 1), "window": self.window,
                "receptive_field": self.receptive_field, "delay": self.delay}

    def window_macs(self) -> int:
        """Multiply-accumulates of the offline model on one window."""
        clip = torch.zeros((1, *self.frame_shape[: self.time_dim - 1], self.window, *self.frame_shape[self.time_dim - 1:]))
        return _macs(lambda: self.module(clip))

    def state(self) -> tuple[torch.Tensor, ...]:
        """The frames kept, one tensor per kept value (its positions on its time axis, oldest
        first), once the stream is full: the inputs after the frame of :meth:`step_module`."""
        if self._frame < self._start[self._output]:
            raise ValueError(f"the stream is not full yet: {self._frame + 1} of {self._start[self._output] + 1} frames")
        return tuple(torch.cat(list(self._history[node]), dim=self._infos[node].axis) for node in self._keep)

    def step_module(self) -> nn.Module:
        """One step as a pure function ``(frame, *state) -> (output, *state)`` of a full stream,
        for export: ``onefit.export(stream.step_module(), path, (frame, *stream.state()))`` gives
        a verified ONNX file that runs the stream on ONNX Runtime, its state passed in and out."""
        return _Step(self)

    def extra_repr(self) -> str:
        return f"window={self.window}, receptive_field={self.receptive_field}, delay={self.delay}"


class _Buffer:
    """A kept value's frames as one tensor along its time axis: ``[-1 - lag]`` reads one, and
    ``append`` drops the oldest (what the step's deque does, as tensor operations)."""

    def __init__(self, tensor: torch.Tensor, axis: int):
        self.tensor, self.axis = tensor, axis

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tensor.narrow(self.axis, self.tensor.shape[self.axis] + index, 1)

    def append(self, value: torch.Tensor) -> None:
        kept = self.tensor.shape[self.axis]
        self.tensor = torch.cat([self.tensor.narrow(self.axis, 1, kept - 1), value], dim=self.axis)


class _Step(nn.Module):
    """The steps of a stream without its state (exporters swap the tensors a module holds, so the
    stream's own histories stay out of reach)."""

    def __init__(self, stream: Streaming):
        super().__init__()
        self.model, self.attention = stream.module, stream.attention  # their parameters, for export
        kept = {node: stream._infos[node].axis for node in stream._keep}
        object.__setattr__(self, "_spec", (stream._plan, kept, stream._output))

    def forward(self, frame: torch.Tensor, *state: torch.Tensor):
        plan, kept, output = self._spec
        history = {node: _Buffer(tensor, axis) for (node, axis), tensor in zip(kept.items(), state)}
        now: dict = {}
        for node, step in plan:  # a full stream: every node has its value
            now[node] = step(now, history, frame)
            if node in history:
                history[node].append(now[node])
        return (now[output], *(history[node].tensor for node in kept))


def _macs(fn: Callable) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2



def continual(module: nn.Module, example: torch.Tensor, time_dim: int | None = None) -> Streaming:
    """``module`` as a :class:`Streaming` module, traced on ``example`` (one clip: its length in
    time is the window each streaming output stands for). ``time_dim``: the axis of time in a
    clip; by default 2 where the first layer is a ``Conv1d`` / ``Conv3d`` ((B, C, T) or
    (B, C, T, H, W)), else 1 ((B, T, features)). Raises :class:`NotStreamable` naming the layer
    that cannot stream and why."""
    from onefit.family import Family

    if isinstance(module, Family):
        raise TypeError("continual() takes a plain module: extract a sub-model first (family.extract(arch))")
    if not isinstance(example, torch.Tensor) or example.dim() < 2:
        raise ValueError("continual() needs an example clip: a tensor (batch, ..., time, ...)")
    module = module.eval()
    graph = _trace(module, example)
    if time_dim is None:
        time_dim = _default_time_dim(graph, module)
    time_dim %= example.dim()
    if time_dim == 0:
        raise ValueError("time_dim 0 is the batch axis; name the clip's time axis")
    return _Compiler(module, graph, example, time_dim).build()


class _Tracer(fx.Tracer):
    """Attention (torch's, and a family sub-model's with fewer heads) is one call: it streams whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_attention(m) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    try:
        graph = fx.GraphModule(module, _Tracer().trace(module), type(module).__name__)
    except Exception as err:  # fx raises many types; all mean "cannot trace"
        raise NotStreamable(f"cannot trace {type(module).__name__} with torch.fx: {err}") from err
    with torch.no_grad():
        try:
            module(example)
        except Exception as err:
            raise ValueError(f"{type(module).__name__} fails on the example clip of shape {tuple(example.shape)}: "
                             f"{type(err).__name__}: {err}") from err
        ShapeProp(graph).propagate(example)
    return graph


def _default_time_dim(graph: fx.GraphModule, module: nn.Module) -> int:
    for node in graph.graph.nodes:
        if node.op == "call_module":
            return 2 if isinstance(module.get_submodule(node.target), (nn.Conv1d, nn.Conv3d)) else 1
    return 1


class _Compiler:
    """Reads the traced graph node by node: what each value is (stream, window, newest) and the
    step that computes it from the values of this frame and the histories of earlier frames."""

    def __init__(self, module: nn.Module, graph: fx.GraphModule, example: torch.Tensor, time_dim: int):
        self.module, self.graph, self.example, self.time_dim = module, graph, example, time_dim
        self.modules = dict(module.named_modules())
        self.info: dict[fx.Node, _Info] = {}
        self.start: dict[fx.Node, int] = {}  # the first frame at which a node has a value
        self.keep: dict[fx.Node, int] = {}  # frames of history a stream node keeps
        self.plan: list[tuple[fx.Node, Callable]] = []
        self.attention = nn.ModuleDict()
        self.reads: dict[fx.Node, list] = {}  # (input node, lag) each node's value depends on
        self.span: dict[fx.Node, int] = {}  # frames a node needs beyond its reads (attention's window)
        self.folded: set[fx.Node] = set()  # batch norms folded into the convolution before them

    def build(self) -> Streaming:
        output = None
        for node in self.graph.graph.nodes:
            if node.op == "output":
                output = self.output(node)
                continue
            info, step, lags = self.visit(node)
            self.info[node] = info
            span = self.span.get(node, 0)
            self.start[node] = max([self.start[a] + lag for a, lag in lags] + [0]) + span
            self.reads[node] = lags + [(a, lag + span) for a, lag in lags if span]
            for a, lag in lags:
                if self.info[a].kind == "stream" and lag:
                    self.keep[a] = max(self.keep.get(a, 1), lag + 1)
            self.plan.append((node, step))
        window = self.example.shape[self.time_dim]
        frame_shape = tuple(s for i, s in enumerate(self.example.shape) if i not in (0, self.time_dim))
        reach = self.reach(output)
        return Streaming(self.module, self.graph, self.time_dim, window, frame_shape, self.plan, self.start,
                         self.keep, output, receptive_field=max(reach) - min(reach) + 1, delay=min(reach),
                         attention=self.attention, infos=self.info)

    def refuse(self, node: fx.Node, why: str) -> None:
        where = node.target if node.op == "call_module" else f"{node.name} ({_op_name(node)})"
        raise NotStreamable(f"{type(self.module).__name__} cannot run one frame at a time: {where}: {why}")

    # -- reading values --------------------------------------------------------------------------
    def output(self, node: fx.Node) -> fx.Node:
        out = node.args[0]
        if not isinstance(out, fx.Node) or self.info[out].kind == "const":
            self.refuse(node, "the model's output must be one tensor computed from the clip")
        info = self.info[out]
        if info.kind == "window":
            return out
        # a value per position (a stream, or attention's newest): the step gives the newest one
        newest = fx.Node(self.graph.graph, f"{out.name}_newest", "call_function", operator.getitem, (out,), {})
        lag = info.offset if info.kind == "stream" else 0
        step = self.reader(out, lag, lambda v: v.squeeze(info.axis))
        self.info[newest] = _Info("window")
        self.reads[newest] = [(out, lag)]
        self.start[newest] = self.start[out] + lag
        if info.kind == "stream" and lag:
            self.keep[out] = max(self.keep.get(out, 1), lag + 1)
        self.plan.append((newest, step))
        return newest

    def reader(self, node: fx.Node, lag: int, then=lambda v: v) -> Callable:
        if self.info[node].kind == "stream" and lag:
            return lambda now, history, frame: then(history[node][-1 - lag])
        return lambda now, history, frame: then(now[node])

    def value(self, arg, lag: int = 0) -> Callable:
        """A function of (now, history) giving ``arg`` (a node, at ``lag`` frames back, or a constant)."""
        if isinstance(arg, fx.Node):
            return self.reader(arg, lag)
        if isinstance(arg, (tuple, list)):
            parts = [self.value(a, lag) for a in arg]
            return lambda now, history, frame: type(arg)(p(now, history, frame) for p in parts)
        return lambda now, history, frame: arg

    def reach(self, node: fx.Node) -> list[int]:
        """Lags (frames back from the newest) of the input frames ``node``'s value depends on."""
        lags: dict[fx.Node, set[int]] = {}
        for n in self.graph.graph.nodes:
            if n.op == "placeholder":
                lags[n] = {0}
        for n, _ in self.plan:
            for a, lag in self.reads.get(n, ()):
                lags.setdefault(n, set()).update(x + lag for x in lags.get(a, ()))
        return sorted(lags.get(node, {0}))

    # -- the rules: each gives (what the node's value is, its step, the (node, lag) it reads) ------
    def visit(self, node: fx.Node):
        if node.op == "placeholder":
            if self.info:
                self.refuse(node, "the model takes more than one input; streaming takes one clip")
            axis = self.time_dim
            return (_Info("stream", axis, 1, 0, self.example.shape[axis]),
                    lambda now, history, frame: frame.unsqueeze(axis), [])
        if node.op == "get_attr":
            target = node.target
            return _Info("const"), lambda now, history, frame: _attr(self.module, target), []
        kinds = {self.info[a].kind for a in _nodes(node)}
        if node.op == "call_module":
            mod = self.modules[node.target]
            if kinds <= {"window", "const"}:
                return self.whole(node, mod)
            if isinstance(mod, _TEMPORAL):
                return self.temporal(node, mod)
            if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)):
                return self.adaptive(node, mod)
            if _is_attention(mod):
                return self.attention_step(node, mod)
            x = node.args[0]
            info = self.info[x]
            if isinstance(mod, _POINTWISE_MODULES) or (
                    isinstance(mod, _LAST_AXIS_MODULES) and info.axis != len(_shape(x)) - 1) or (
                    isinstance(mod, nn.modules.batchnorm._BatchNorm) and info.axis >= 2):
                return self.pointwise(node, mod)
            self.refuse(node, f"{type(mod).__name__} on a value with a time axis: onefit cannot tell that it "
                              f"acts on each frame alone")
        op = _op_name(node)
        if kinds <= {"window", "const"}:
            return self.whole(node, None)
        if node.target is operator.getitem:
            return self.index(node)
        if op in _BINARY_FUNCS or node.target in (operator.add, operator.mul, operator.sub, operator.truediv):
            return self.binary(node)
        if op in _POINTWISE_FUNCS:
            return self.pointwise(node, None)
        if op in _REDUCE_FUNCS:
            return self.reduce(node, op)
        if op in ("flatten", "transpose", "permute"):
            return self.move_axes(node, op)
        if op in ("size", "dim", "getattr"):
            self.refuse(node, "reads the shape of a value with a time axis (one frame's shape differs from a clip's)")
        self.refuse(node, f"op {op} on a value with a time axis: onefit cannot tell that it acts on each frame alone")

    def whole(self, node: fx.Node, mod: nn.Module | None):
        """A node of window values and constants: computed as the offline model does, every step."""
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
            x = node.args[0]  # one input: no argument tuples to build each step
            if isinstance(mod, nn.Linear):
                weight, bias = mod.weight, mod.bias
                return (_Info("window"), lambda now, history, frame: torch.nn.functional.linear(now[x], weight, bias),
                        [(x, 0)])
            return _Info("window"), lambda now, history, frame: mod(now[x]), [(x, 0)]
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        if node.op == "call_module":
            fn = mod
        elif node.op == "call_method":
            name = node.target
            fn = lambda self_, *a, **k: getattr(self_, name)(*a, **k)  # noqa: E731
        else:
            fn = node.target
        return (_Info("window"), lambda now, history, frame: fn(*args(now, history, frame), **kwargs(now, history, frame)),
                [(a, 0) for a in _nodes(node)])

    def pointwise(self, node: fx.Node, mod: nn.Module | None):
        x = node.args[0]
        info = self.info[x]
        if node in self.folded:
            return info, (lambda now, hist, frame: now[x]), [(x, 0)]
        fast = _per_frame(mod) if mod is not None and len(_nodes(node)) == 1 else None
        step = (lambda now, hist, frame: fast(now[x])) if fast is not None else self.whole(node, mod)[1]
        return info, step, [(a, 0) for a in _nodes(node)]

    def temporal(self, node: fx.Node, mod: nn.Module):
        """A convolution or pooling over time: its taps are the input's newest positions, spaced by
        the input's spacing times the dilation; computed for the newest position only."""
        x = node.args[0]
        info = self.info[x]
        name = type(mod).__name__
        if info.kind != "stream" or info.axis != 2:
            self.refuse(node, f"{name} over time of a value that is not one position per frame on axis 2")
        kernel, stride, padding, dilation = (_tuple(getattr(mod, a, 1), x) for a in
                                             ("kernel_size", "stride", "padding", "dilation"))
        if padding[0] != 0:
            self.refuse(node, f"padding {padding[0]} in time: the first and last outputs of a padded clip see zeros "
                              f"outside it, which a stream never has; build it with padding 0 in time")
        if getattr(mod, "ceil_mode", False):
            self.refuse(node, "ceil_mode pools a partial window at the clip's end")
        if isinstance(mod, (nn.Conv1d, nn.Conv3d)) and mod.padding_mode != "zeros":
            self.refuse(node, f"padding_mode {mod.padding_mode!r}")
        k, r, d, s = kernel[0], stride[0], dilation[0], info.spacing
        last = (info.length - (k - 1) * d - 1) // r  # the last output position on a window
        if last < 0:
            self.refuse(node, f"its kernel spans {(k - 1) * d + 1} positions, more than the {info.length} it gets "
                              f"from a window of {self.example.shape[self.time_dim]} frames")
        end = last * r + (k - 1) * d  # the input position of its last tap
        lags = [s * d * (k - 1 - i) for i in range(k)]
        out = _Info("stream", 2, s * r, info.offset + s * (info.length - 1 - end), last + 1)
        reads = [(x, lag) for lag in lags]
        if isinstance(mod, nn.Conv1d) and mod.groups == 1:  # the taps times the kernel: one matrix product
            weight, bias = mod.weight.reshape(mod.out_channels, -1), mod.bias
            users = list(node.users)
            norm = self.modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
            scale_shift = _batch_norm_affine(norm) if norm is not None else None
            if scale_shift is not None:  # the batch norm that alone reads it, folded into the product
                scale, shift = scale_shift
                weight = weight.detach() * scale[:, None]
                bias = shift if bias is None else bias.detach() * scale + shift
                self.folded.add(users[0])

            def conv_step(now, hist, frame):
                taps = torch.cat([hist[x][-1 - lag] if lag else now[x] for lag in lags], dim=2)
                return torch.nn.functional.linear(taps.flatten(1), weight, bias).unsqueeze(2)

            return out, conv_step, reads
        step_mod = copy.copy(mod)  # the same weights, stride 1 and dilation 1 in time over the gathered taps
        if isinstance(mod, (nn.Conv1d, nn.Conv3d)):
            step_mod.stride, step_mod.dilation = (1, *stride[1:]), (1, *dilation[1:])
        else:
            step_mod.stride = (1, *stride[1:]) if isinstance(mod.stride, tuple) else 1
            if hasattr(mod, "dilation"):
                step_mod.dilation = (1, *dilation[1:]) if isinstance(mod.dilation, tuple) else 1
        history = lambda now, hist, frame: torch.cat(  # noqa: E731
            [hist[x][-1 - lag] if lag else now[x] for lag in lags], dim=2)
        return out, lambda now, hist, frame: step_mod(history(now, hist, frame)), reads

    def window_taps(self, x: fx.Node) -> tuple[Callable, list[int]]:
        """Every position of ``x`` on the window, oldest first, concatenated on its time axis."""
        info = self.info[x]
        lags = [info.offset + info.spacing * m for m in reversed(range(info.length))]
        return (lambda now, hist, frame: torch.cat([hist[x][-1 - lag] if lag else now[x] for lag in lags],
                                                   dim=info.axis)), lags

    def adaptive(self, node: fx.Node, mod: nn.Module):
        x = node.args[0]
        size = mod.output_size if isinstance(mod.output_size, tuple) else (mod.output_size,)
        if self.info[x].kind != "stream" or self.info[x].axis != 2 or size[0] != 1:
            self.refuse(node, f"{type(mod).__name__} to {mod.output_size} over time: only pooling time to 1 streams")
        taps, lags = self.window_taps(x)
        return _Info("window"), lambda now, hist, frame: mod(taps(now, hist, frame)), [(x, lag) for lag in lags]

    def reduce(self, node: fx.Node, op: str):
        x = node.args[0]
        info = self.info[x]
        ndim = len(_shape(x))
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dims is None:
            self.refuse(node, f"{op} over every axis at once")
        dims = {d % ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if info.axis not in dims:
            axis = info.axis if keepdim else info.axis - sum(d < info.axis for d in dims)
            return replace(info, axis=axis), self.whole(node, None)[1], [(x, 0)]
        if info.kind != "stream":
            self.refuse(node, f"{op} over time of a value that every new frame changes at every position "
                              f"(attention's output): read its newest position instead (x[:, -1])")
        taps, lags = self.window_taps(x)
        rest = self.value(node.args[1:]), self.value(node.kwargs)
        method = node.op == "call_method"
        fn = (lambda v, *a, **k: getattr(v, op)(*a, **k)) if method else node.target
        return (_Info("window"),
                lambda now, hist, frame: fn(taps(now, hist, frame), *rest[0](now, hist, frame), **rest[1](now, hist, frame)),
                [(x, lag) for lag in lags])

    def binary(self, node: fx.Node):
        """Streams are added where their positions meet: each read at its offset beyond the
        newest of them; a stream with a window value or attention's newest gives the newest only."""
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        infos = [self.info[a] for a in tensors]
        streams = [i for i in infos if i.kind == "stream"]
        if len({(i.spacing, i.length) for i in streams}) > 1:
            self.refuse(node, "combines values with different positions in time")
        axis = len(_shape(node)) - max(len(_shape(a)) - i.axis for a, i in zip(tensors, infos)
                                       if i.kind in ("stream", "newest"))
        if all(i.kind == "stream" for i in infos if i.kind != "const"):
            base = min(i.offset for i in streams)
            lags = {a: i.offset - base for a, i in zip(tensors, infos) if i.kind == "stream"}
            out = replace(streams[0], axis=axis, offset=base)
        else:  # every position depends on the whole window: keep only the newest
            lags = {a: i.offset for a, i in zip(tensors, infos) if i.kind == "stream"}
            out = _Info("newest", axis)
        args = [self.value(a, lags.get(a, 0)) if isinstance(a, fx.Node) else self.value(a) for a in node.args]
        kwargs = self.value(node.kwargs)
        fn = node.target if node.op == "call_function" else (lambda v, *a, **k: getattr(v, node.target)(*a, **k))
        return (out, lambda now, hist, frame: fn(*(a(now, hist, frame) for a in args), **kwargs(now, hist, frame)),
                [(a, lags.get(a, 0)) for a in tensors])

    def index(self, node: fx.Node):
        x, key = node.args
        info = self.info[x]
        if info.kind == "newest" and isinstance(key, int):  # attention's (output, weights)
            if key != 0:
                self.refuse(node, "uses attention weights, which streaming does not compute")
            return info, lambda now, hist, frame: now[x][0], [(x, 0)]
        if _shape(x) is None:
            self.refuse(node, "indexes a value that is not a tensor")
        ndim = len(_shape(x))
        key = full_index(key, ndim)
        if key is None:
            self.refuse(node, "indexing by a tensor or by computed bounds")
        positions = [i for i, k in enumerate(key) if k is not None]  # key entries of the input's axes
        at = positions[info.axis]
        entry = key[at]
        new_axis = sum(1 for k in key[:at] if k is None or isinstance(k, slice))
        step_key = key[:at] + (slice(None),) + key[at + 1:]
        if entry == slice(None):
            if all(k == slice(None) for k in step_key):  # x[..., 4:]: one frame of it is the frame itself
                return replace(info, axis=new_axis), (lambda now, hist, frame: now[x]), [(x, 0)]
            step = lambda now, hist, frame: now[x][step_key]  # noqa: E731
            return replace(info, axis=new_axis), step, [(x, 0)]
        picked = range(info.length)[entry] if info.kind == "stream" else None
        if info.kind == "newest":
            if entry not in (-1, slice(-1, None)):
                self.refuse(node, "reads positions other than the newest of attention's output")
            if isinstance(entry, slice):
                return replace(info, axis=new_axis), (lambda now, hist, frame: now[x][step_key]), [(x, 0)]
            one = key[:at] + (0,) + key[at + 1:]
            return _Info("window"), (lambda now, hist, frame: now[x][one]), [(x, 0)]
        if isinstance(entry, int):  # one position: a value of the window, read at its lag
            lag = info.offset + info.spacing * (info.length - 1 - (entry % info.length))
            one = key[:at] + (0,) + key[at + 1:]
            return _Info("window"), lambda now, hist, frame: (hist[x][-1 - lag] if lag else now[x])[one], [(x, lag)]
        if len(picked) == 0:
            self.refuse(node, "selects no position in time")
        out = replace(info, axis=new_axis, spacing=info.spacing * (entry.step or 1), length=len(picked),
                      offset=info.offset + info.spacing * (info.length - 1 - picked[-1]))
        return out, lambda now, hist, frame: now[x][step_key], [(x, 0)]

    def move_axes(self, node: fx.Node, op: str):
        x = node.args[0]
        info = self.info[x]
        ndim = len(_shape(x))
        if op == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            start, end = start % ndim, end % ndim
            if start <= info.axis <= end:
                self.refuse(node, "flattens the time axis into others")
            axis = info.axis - (end - start) * (end < info.axis)
        elif op == "transpose":
            d0, d1 = (a % ndim for a in node.args[1:3])
            axis = {d0: d1, d1: d0}.get(info.axis, info.axis)
        else:
            dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
            axis = [d % ndim for d in dims].index(info.axis)
        return replace(info, axis=axis), self.whole(node, None)[1], [(x, 0)]

    def attention_step(self, node: fx.Node, mod: nn.Module):
        """Self-attention over the window at its newest query (single-output attention, Hedegaard
        et al. 2022): the keys and values of each frame are projected once, when it arrives, and
        kept as streams; each step projects the newest query and attends over the window's keys."""
        q = node.args[0]
        k = node.args[1] if len(node.args) > 1 else node.kwargs.get("key")
        v = node.args[2] if len(node.args) > 2 else node.kwargs.get("value")
        info = self.info[q]
        masked = [node.kwargs.get(n) for n in ("key_padding_mask", "attn_mask")] + list(node.args[3:4]) + \
            list(node.args[5:6])
        if not (q is k is v):
            self.refuse(node, "attention whose keys or values are not its queries (only self-attention streams)")
        if any(m is not None for m in masked) or node.kwargs.get("is_causal"):
            self.refuse(node, "attention with a mask")
        if info.kind != "stream" or not mod.batch_first or info.axis != 1 or info.spacing != 1:
            self.refuse(node, "attention needs a batch-first (B, T, E) stream of one position per frame")
        if any(u.target is operator.getitem and u.args[1] == 1 and u.users for u in node.users):
            self.refuse(node, "uses attention weights, which streaming does not compute")
        self.check_newest_only(node)
        projections, (heads, head_dim) = _projections(mod)
        if projections is None:
            self.refuse(node, "an attention with bias_k/bias_v or zero attention, which onefit does not stream")
        q_proj, k_proj, v_proj, out_proj = projections
        self.attention[str(len(self.attention))] = nn.ModuleList(projections)
        keys = []
        for proj, part in ((k_proj, "keys"), (v_proj, "values")):  # a stream each: one projection per frame
            kv = fx.Node(self.graph.graph, f"{node.name}_{part}", "call_module", node.target, (q,), {})
            self.info[kv], self.start[kv], self.reads[kv] = info, self.start[q], [(q, 0)]
            self.plan.append((kv, lambda now, hist, frame, proj=proj: proj(now[q])))
            keys.append(kv)
        k_taps, lags = self.window_taps(keys[0])
        v_taps, _ = self.window_taps(keys[1])
        lag = info.offset

        def step(now, hist, frame):
            newest = hist[q][-1 - lag] if lag else now[q]
            out = attend(q_proj(newest), k_taps(now, hist, frame), v_taps(now, hist, frame), heads, head_dim, 0.0,
                          False)[0]
            return out_proj(out), None

        return _Info("newest", 1), step, [(q, lag)] + [(kv, l) for kv in keys for l in lags]

    def check_newest_only(self, node: fx.Node) -> None:
        """Everything computed from attention's output must use its newest position only, up to a
        read of that position or a layer of the window."""
        pending = list(node.users)
        seen = set()
        while pending:
            user = pending.pop()
            if user in seen or user.op == "output":
                continue
            seen.add(user)
            if user.target is operator.getitem and isinstance(user.args[1], tuple):
                continue  # checked when indexed
            if _op_name(user) in _REDUCE_FUNCS or (user.op == "call_module" and (
                    _is_attention(self.modules[user.target]) or isinstance(self.modules[user.target], _TEMPORAL))):
                mod = self.modules.get(user.target) if user.op == "call_module" else None
                what = type(mod).__name__ if mod is not None else _op_name(user)
                self.refuse(node, f"every position of its output is used later ({user.name}: {what}); each new frame "
                                  f"changes every earlier output, so only attention read at its newest position "
                                  f"streams")
            pending.extend(user.users)


def _per_frame(mod: nn.Module) -> Callable | None:
    """A cheaper form of a per-position layer for one frame: batch norm (in eval mode) as its
    scale and shift, ReLU as torch.relu, identities skipped; None: call the layer."""
    affine = _batch_norm_affine(mod)
    if affine is not None:
        return _affine(*affine)
    if isinstance(mod, nn.ReLU):
        return torch.relu
    if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)) and not mod.training:
        return lambda v: v
    return None


def _batch_norm_affine(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) per channel of a batch norm in eval mode with running statistics; else None."""
    if not isinstance(mod, nn.modules.batchnorm._BatchNorm) or mod.training or mod.running_mean is None:
        return None
    with torch.no_grad():
        scale = torch.rsqrt(mod.running_var + mod.eps)
        scale = scale * mod.weight if mod.affine else scale
        shift = -mod.running_mean * scale + (mod.bias if mod.affine else 0)
    return scale.detach(), shift.detach()


def _affine(scale: torch.Tensor, shift: torch.Tensor) -> Callable:
    """x * scale + shift over axis 1 (channels) of a one-frame value of any rank."""
    shaped = {}

    def apply(v: torch.Tensor) -> torch.Tensor:
        if v.dim() not in shaped:
            view = (-1,) + (1,) * (v.dim() - 2)
            shaped[v.dim()] = scale.view(view), shift.view(view)
        a, b = shaped[v.dim()]
        return torch.addcmul(b, v, a)

    return apply


def _is_attention(mod: nn.Module) -> bool:
    return isinstance(mod, nn.MultiheadAttention) or hasattr(mod, "attention_heads")


def _projections(mod: nn.Module):
    """(query, key, value, output) projections of an attention and its (heads, head dim):
    ``nn.MultiheadAttention``'s fused weights split in Linear layers, or a family sub-model's
    attention (which has them as layers)."""
    if hasattr(mod, "attention_heads"):  # onefit's extracted attention with fewer heads
        return (mod.q_proj, mod.k_proj, mod.v_proj, mod.out_proj), mod.attention_heads
    if mod.bias_k is not None or mod.add_zero_attn:
        return None, (0, 0)
    e = mod.embed_dim
    if mod._qkv_same_embed_dim:
        weights = mod.in_proj_weight.split(e)
    else:
        weights = (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)
    biases = mod.in_proj_bias.split(e) if mod.in_proj_bias is not None else (None,) * 3
    layers = []
    for w, b in zip(weights, biases):
        layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        layer.weight = nn.Parameter(w.detach().clone())
        if b is not None:
            layer.bias = nn.Parameter(b.detach().clone())
        layers.append(layer)
    return (*layers, mod.out_proj), (mod.num_heads, mod.head_dim)


def _nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return list(dict.fromkeys(found))


def _tuple(value, x: fx.Node) -> tuple:
    spatial = len(_shape(x)) - 2
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * spatial


def _attr(module: nn.Module, target: str):
    value = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


__all__ = ["NotStreamable", "Streaming", "continual"]
