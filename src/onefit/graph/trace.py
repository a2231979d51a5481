"""Tracing a model with torch.fx and recording every tensor's shape on example inputs."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from onefit.elastic.registry import elastic_type_for


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
