"""Bundled datasets as (train, test) DataLoaders: images as ``(x, y)``, sentences as ``(input_ids,
attention_mask)``, text as packed token blocks. Nothing is downloaded."""

from onefit.data.bundled import digits, mnist5k, validation_split
from onefit.data.text import pydoc_blocks, sentences

# what a run folder may name as "onefit.data:NAME"
DATASETS = {"digits": digits, "mnist5k": mnist5k, "sentences": sentences, "pydoc_blocks": pydoc_blocks}

__all__ = ["DATASETS", "digits", "mnist5k", "pydoc_blocks", "sentences", "validation_split"]
