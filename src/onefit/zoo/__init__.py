"""Reference architectures written for onefit (torchvision does not run on these machines).

Every factory is a plain function of keyword arguments. A model built by one of them remembers
how (``onefit.zoo.source(model)``), so a family made from it can be saved and loaded again
without passing the model:

>>> model = resnet(widths=(8, 16), blocks=(1, 1))
>>> source(model)
{'factory': 'onefit.zoo:resnet', 'kwargs': {'widths': [8, 16], 'blocks': [1, 1]}}
"""

from __future__ import annotations

import functools
import hashlib
import inspect as _inspect
import json
from typing import Callable

from torch import nn

from onefit.zoo import cnn, convnext as _convnext, encoder, minilm, mlp as _mlp, mobile, smollm2, ssm, temporal
from onefit.zoo import vit as _vit

SOURCE_ATTR = "_onefit_source"


def _recorded(name: str, factory: Callable) -> Callable:
    """``factory`` that tags the model it builds with ``{"factory": "onefit.zoo:NAME", "kwargs": ...}``."""
    signature = _inspect.signature(factory)

    @functools.wraps(factory)
    def build_recorded(*args, **kwargs) -> nn.Module:
        model = factory(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments  # positional arguments by name
        try:  # in JSON form (tuples become lists), as the family manifest stores it
            recorded = json.loads(json.dumps(bound))
        except TypeError:  # an argument JSON cannot hold: the model cannot be rebuilt from a file
            return model
        object.__setattr__(model, SOURCE_ATTR, {"factory": f"onefit.zoo:{name}", "kwargs": recorded,
                                               "structure": structure(model)})
        return model

    return build_recorded


MODELS = {name: _recorded(name, fn) for name, fn in {
    "convnext": _convnext.convnext, "mlp": _mlp.mlp, "mobilenet_v2": mobile.mobilenet_v2,
    "mobilenet_v3": mobile.mobilenet_v3, "plain_cnn": cnn.plain_cnn, "resnet": cnn.resnet,
    "sequence_encoder": encoder.sequence_encoder, "temporal_cnn": temporal.temporal_cnn, "vit": _vit.vit,
    "ssm_classifier": ssm.ssm_classifier, "minilm": minilm.embedder, "smollm2": smollm2.smollm2,
}.items()}
convnext, mlp, mobilenet_v2, mobilenet_v3 = (MODELS[n] for n in ("convnext", "mlp", "mobilenet_v2", "mobilenet_v3"))
plain_cnn, resnet, sequence_encoder, temporal_cnn, vit, ssm_classifier = (
    MODELS[n] for n in ("plain_cnn", "resnet", "sequence_encoder", "temporal_cnn", "vit", "ssm_classifier"))


def structure(model: nn.Module) -> str:
    """A fingerprint of ``model``'s modules (types, sizes, options): it changes when a layer is
    swapped or resized after the factory built the model."""
    return hashlib.sha256(repr(model).encode()).hexdigest()[:16]


def source(model: nn.Module) -> dict | None:
    """How to rebuild ``model`` when a zoo factory built it and it is still what the factory
    built, else None."""
    recorded = getattr(model, SOURCE_ATTR, None)
    if recorded is None or recorded.get("structure") != structure(model):
        return None
    return {"factory": recorded["factory"], "kwargs": recorded["kwargs"]}


def build(name: str, **kwargs):
    """Build zoo model ``name``; returns ``(model, source)`` where source rebuilds it."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(MODELS)}")
    model = MODELS[name](**kwargs)
    return model, source(model)


__all__ = ["MODELS", "build", "convnext", "mlp", "mobilenet_v2", "mobilenet_v3", "plain_cnn", "resnet",
           "sequence_encoder", "ssm_classifier", "temporal_cnn", "vit", "source"]
