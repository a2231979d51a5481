"""Dimension kinds, one file each: width and heads, depth, kernel, bits, rank, adapter rank. A kind of your own is one
class registered with ``register_kind`` (``onefit.dims.base``)."""

from onefit.dims.base import KINDS, Kind, register_kind
from onefit.dims import width, depth, kernel, bits, rank, adapter  # noqa: F401  (registration order = order in a space)

__all__ = ["KINDS", "Kind", "register_kind"]
