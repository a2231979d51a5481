"""One table from plain torch layer types to their elastic counterparts, walked by class hierarchy.

>>> class MyLinear(nn.Linear):  # a subclass finds its base's elastic type
...     pass
>>> elastic_type_for(MyLinear(2, 3)).__name__
'ElasticLinear'
"""

from __future__ import annotations

from typing import Callable

from torch import nn

# "package.module.Class" of a plain layer -> its elastic layer (which has from_plain and to_plain).
# Keyed by name, so that a type from an optional package (transformers) needs no import to register.
_REGISTRY: dict[str, type] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(*plain: type | str) -> Callable[[type], type]:
    """Class decorator: ``@register(nn.Linear)`` or ``@register("transformers.pytorch_utils.Conv1D")``
    on an elastic layer with ``from_plain``/``to_plain``."""

    def wrap(elastic_type: type) -> type:
        for p in plain:
            _REGISTRY[p if isinstance(p, str) else _qualified(p)] = elastic_type
        return elastic_type

    return wrap


def elastic_type_for(module: nn.Module) -> type | None:
    """The elastic type for ``module``, looking up its class and then its bases; None if unknown."""
    for cls in type(module).__mro__:
        if _qualified(cls) in _REGISTRY:
            return _REGISTRY[_qualified(cls)]
    return None


def to_elastic(module: nn.Module) -> nn.Module:
    """An elastic layer sharing ``module``'s parameters and buffers (same state-dict keys)."""
    elastic_type = elastic_type_for(module)
    if elastic_type is None:
        known = sorted(_REGISTRY)
        raise TypeError(f"no elastic layer for {type(module).__name__}; known types: {known}")
    return elastic_type.from_plain(module)



def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the module called ``name``, in the train/eval mode of the one it replaces."""
    parent, _, child = name.rpartition(".")
    new.training = root.get_submodule(name).training  # its own flag only; children keep theirs
    setattr(root.get_submodule(parent) if parent else root, child, new)
