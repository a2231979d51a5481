"""One table from plain torch layer types to their elastic counterparts, walked by class hierarchy."""

from __future__ import annotations

from typing import Callable

from torch import nn

# plain layer type -> elastic layer type (which has from_plain and to_plain)
_REGISTRY: dict[type, type] = {}


def register(*plain_types: type) -> Callable[[type], type]:
    """Class decorator: ``@register(nn.Linear)`` on an elastic layer with ``from_plain``/``to_plain``."""

    def wrap(elastic_type: type) -> type:
        for plain in plain_types:
            _REGISTRY[plain] = elastic_type
        return elastic_type

    return wrap


def elastic_type_for(module: nn.Module) -> type | None:
    """The elastic type for ``module``, looking up its class and then its bases; None if unknown."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def to_elastic(module: nn.Module) -> nn.Module:
    """An elastic layer sharing ``module``'s parameters and buffers (same state-dict keys)."""
    elastic_type = elastic_type_for(module)
    if elastic_type is None:
        known = sorted(t.__name__ for t in _REGISTRY)
        raise TypeError(f"no elastic layer for {type(module).__name__}; known types: {known}")
    return elastic_type.from_plain(module)

