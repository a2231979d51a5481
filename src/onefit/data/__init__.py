"""Bundled datasets as (train, test) DataLoaders of ``(x, y)``. Nothing is downloaded."""

from onefit.data.bundled import digits, mnist5k

__all__ = ["digits", "mnist5k"]
