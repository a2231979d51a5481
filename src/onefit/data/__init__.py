"""Bundled datasets as (train, test) DataLoaders of ``(x, y)``. Nothing is downloaded."""

from onefit.data.bundled import digits, mnist5k, validation_split

__all__ = ["digits", "mnist5k", "validation_split"]
