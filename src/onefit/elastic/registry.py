"""One table from plain torch layer types to their elastic counterparts, walked by class hierarchy."""

from __future__ import annotations

from typing import Callable

from torch import nn

# plain layer type -> elastic layer type (which has from_plain and to_plain)
_REGISTRY: dict[type, type] = {}
# Types from optional packages, by qualified name, so that importing onefit imports none of them.
_BY_NAME: dict[str, type] = {}


def register(*plain_types: type) -> Callable[[type], type]:
    """Class decorator: ``@register(nn.Linear)`` on an elastic layer with ``from_plain``/``to_plain``."""

    def wrap(elastic_type: type) -> type:
        for plain in plain_types:
            _REGISTRY[plain] = elastic_type
        return elastic_type

    return wrap


def register_name(*qualified_names: str) -> Callable[[type], type]:
    """Like ``register``, for plain types named ``"package.module.Class"``."""

    def wrap(elastic_type: type) -> type:
        for name in qualified_names:
            _BY_NAME[name] = elastic_type
        return elastic_type

    return wrap


def elastic_type_for(module: nn.Module) -> type | None:
    """The elastic type for ``module``, looking up its class and then its bases; None if unknown."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
        if f"{cls.__module__}.{cls.__qualname__}" in _BY_NAME:
            return _BY_NAME[f"{cls.__module__}.{cls.__qualname__}"]
    return None


def to_elastic(module: nn.Module) -> nn.Module:
    """An elastic layer sharing ``module``'s parameters and buffers (same state-dict keys)."""
    elastic_type = elastic_type_for(module)
    if elastic_type is None:
        known = sorted([t.__name__ for t in _REGISTRY] + list(_BY_NAME))
        raise TypeError(f"no elastic layer for {type(module).__name__}; known types: {known}")
    return elastic_type.from_plain(module)

