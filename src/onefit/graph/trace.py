"""Tracing a model with torch.fx and recording every tensor's shape on example inputs."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from onefit.elastic.registry import elastic_type_for


def op_name(node: fx.Node) -> str:
    """The name of what ``node`` calls: a method or module path, or a function's name."""
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def node_shape(node) -> tuple | None:
    """The shape ``node`` had on the example inputs, or None (not a node, not a tensor)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def full_index(key, ndim: int) -> tuple | None:
    """An indexing key (``x[..., 4:]``, ``x[:, -1]``) written out with an entry for every axis
    of an ``ndim``-axis tensor (None entries, which add an axis, kept); None when it indexes by a
    tensor or by computed bounds.

    >>> full_index((Ellipsis, slice(4, None)), 3)
    (slice(None, None, None), slice(None, None, None), slice(4, None, None))
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(isinstance(k, fx.Node) or not (k is None or k is Ellipsis or isinstance(k, (int, slice))) for k in key):
        return None
    if Ellipsis in key:  # ... stands for the axes the rest does not name
        at = key.index(Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - sum(k is not None for k in key) + 1) + key[at + 1:]
    return key + (slice(None),) * (ndim - sum(k is not None for k in key))


class TraceError(ValueError):
    """The model could not be traced or run on its example inputs."""


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every layer type that has an elastic version kept as one call (a
    layer type of the user's own, registered from their code, is not traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return elastic_type_for(m) is not None or super().is_leaf_module(m, qualname)


def trace(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """Symbolically trace ``model`` and record every tensor's shape on ``example_inputs``."""
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
    except Exception as err:  # fx raises many types; all mean "cannot trace"
        raise TraceError(
            f"cannot trace {type(model).__name__} with torch.fx: {err}. Data-dependent control flow "
            "in forward() is the usual cause; move it out of forward or into a leaf module."
        ) from err
    # Eval mode: shape propagation must not update batch-norm statistics, and must accept batch 1.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(*example_inputs)  # a plain forward first gives the clearest error for bad inputs
            except Exception as err:
                shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs]
                raise TraceError(
                    f"{type(model).__name__} fails on example inputs of shape {shapes}: {type(err).__name__}: {err}"
                ) from err
            ShapeProp(traced).propagate(*example_inputs)
    finally:
        for m, training in modes.items():
            m.train(training)
    return traced
