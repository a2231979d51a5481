"""Dimension kinds as handlers: the family loops over the registered kinds and knows none by name.

A kind is one class (one file) that, given the family's plan and config:

- ``setup_(family)``: changes the module before any dimension is built (rank factorizes layers);
- ``dimensions(family)``: builds its dimensions and their choices;
- ``finish_(family)``: what it needs once the space is built (bits adds input quantizers);
- ``settings(family, arch)``: ``(module, attribute, value)`` that make the family compute ``arch``;
- ``skipped(family, arch)``: name prefixes of the blocks ``arch`` leaves out (depth);
- ``idle(family, arch, gone)``: its dimensions that cannot change the sub-model ``arch``;
- ``extract_layer(family, name, plain, arch)``: a plain extracted layer, changed (bits bakes);
  ``before_extract_`` / ``after_extract_(family, sub, arch)``: on the extracted copy;
- ``cost_(family, arch, rows)``: adjusts the per-layer cost rows (params, MACs, bytes);
- ``columns(family, name)``: ``{column: (text, elastic)}`` for ``onefit.inspect``.

Every hook has a do-nothing default. Register with ``@register_kind``; the order of registration
is the order of the dimensions in a space (``tests/test_extensions.py`` adds a kind of its own).

>>> list(KINDS)[:5]  # onefit's own, in their order; yours come after
['width', 'depth', 'kernel', 'bits', 'rank']
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

from torch import nn

from onefit import space as _space
from onefit.space import Arch, Dimension

KINDS: dict[str, type] = {}  # handler name -> handler class, in registration order


def register_kind(cls: type) -> type:
    """Class decorator: register a dimension-kind handler; its ``names`` become valid ``Dimension`` kinds."""
    if not getattr(cls, "names", ()):
        raise TypeError(f"{cls.__name__} needs a class attribute 'names': the dimension kinds it handles")
    KINDS[cls.names[0]] = cls
    for name in cls.names:
        if name not in _space.KINDS:
            _space.KINDS.append(name)
    return cls


class Kind:
    names: ClassVar[tuple[str, ...]] = ()  # the Dimension kinds this handler builds

    def setup_(self, family) -> None:
        pass

    def dimensions(self, family) -> list[Dimension]:
        return []

    def finish_(self, family) -> None:
        pass

    def settings(self, family, arch: Arch) -> list[tuple[nn.Module, str, Any]]:
        return []

    def skipped(self, family, arch: Arch) -> tuple[str, ...]:
        return ()

    def idle(self, family, arch: Arch, gone: Callable[[str], bool]) -> set[str]:
        return set()

    def before_extract_(self, family, sub: nn.Module, arch: Arch) -> None:
        pass

    def extract_layer(self, family, name: str, plain: nn.Module, arch: Arch) -> nn.Module:
        return plain

    def after_extract_(self, family, sub: nn.Module, arch: Arch) -> None:
        pass

    def cost_(self, family, arch: Arch, rows: Mapping[str, dict]) -> None:
        pass

    def columns(self, family, name: str) -> dict[str, tuple[str, bool]]:
        return {}
