"""Bundled datasets as (train, test) DataLoaders: images as ``(x, y)``, sentences as ``(input_ids,
attention_mask)``, text as packed token blocks. Nothing is downloaded."""

from onefit.data.bundled import digit_rows, digits, mnist5k, mnist5k_rows, validation_split
from onefit.data.text import pydoc_blocks, sentences

# what a run folder may name as "onefit.data:NAME"
DATASETS = {"digits": digits, "mnist5k": mnist5k, "digit_rows": digit_rows, "mnist5k_rows": mnist5k_rows,
            "sentences": sentences, "pydoc_blocks": pydoc_blocks}

__all__ = ["DATASETS", "digit_rows", "digits", "mnist5k", "mnist5k_rows", "pydoc_blocks", "sentences",
           "validation_split"]
