"""Reference architectures written for onefit (torchvision does not run on these machines).

Every factory is a plain function of keyword arguments, so a family can record it as
``"onefit.zoo:NAME"`` and rebuild it on load.
"""

from onefit.zoo.cnn import plain_cnn, resnet
from onefit.zoo.convnext import convnext
from onefit.zoo.encoder import sequence_encoder
from onefit.zoo.mlp import mlp
from onefit.zoo.mobile import mobilenet_v2, mobilenet_v3
from onefit.zoo.temporal import temporal_cnn
from onefit.zoo.vit import vit

MODELS = {"convnext": convnext, "mlp": mlp, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3,
          "plain_cnn": plain_cnn, "resnet": resnet, "sequence_encoder": sequence_encoder, "temporal_cnn": temporal_cnn,
          "vit": vit}


def build(name: str, **kwargs):
    """Build zoo model ``name``; returns ``(model, source)`` where source rebuilds it."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](**kwargs), {"factory": f"onefit.zoo:{name}", "kwargs": kwargs}


__all__ = ["MODELS", "build", "convnext", "mlp", "mobilenet_v2", "mobilenet_v3", "plain_cnn", "resnet",
           "sequence_encoder", "temporal_cnn", "vit"]
