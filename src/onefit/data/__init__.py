"""Bundled datasets as (train, test) DataLoaders of ``(x, y)``. Nothing is downloaded."""

from onefit.data.bundled import digits, mnist5k, validation_split

DATASETS = {"digits": digits, "mnist5k": mnist5k}  # what a run folder may name as "onefit.data:NAME"

__all__ = ["DATASETS", "digits", "mnist5k", "validation_split"]
