"""Bundled datasets as (train, test) DataLoaders: images as ``(x, y)``, sentences as ``(input_ids,
attention_mask)``. Nothing is downloaded."""

from onefit.data.bundled import digits, mnist5k, validation_split
from onefit.data.text import sentences

DATASETS = {"digits": digits, "mnist5k": mnist5k, "sentences": sentences}  # what a run folder may name as "onefit.data:NAME"

__all__ = ["DATASETS", "digits", "mnist5k", "sentences", "validation_split"]
