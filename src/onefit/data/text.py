"""English sentences that ship with CPython (the language reference in ``pydoc_data.topics``, 79
topics), tokenized for a sentence encoder: no download.

Topics, not sentences, are split between training and test (every seventh topic is held out), so
no test sentence comes from a text the model was trained on (nor repeats a training one).

>>> train_text, test_text = reference_sentences()
>>> len(train_text) > 1000 and len(test_text) > 100, any(s in train_text for s in test_text[:50])
(True, False)
"""

from __future__ import annotations

import re

import torch
from torch.utils.data import DataLoader, TensorDataset


def reference_sentences(min_words: int = 6, max_words: int = 40) -> tuple[list[str], list[str]]:
    """(training, test) sentences of the Python language reference: prose only (no code lines)."""
    from pydoc_data.topics import topics

    train, test = [], []
    for i, name in enumerate(sorted(topics)):
        prose = " ".join(line.strip() for line in topics[name].splitlines()
                         if line.strip() and not line.startswith((" ", "\t", ">>>", "...")))
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", prose)]
        kept = [s for s in sentences if min_words <= len(s.split()) <= max_words]
        (test if i % 7 == 6 else train).extend(kept)
    train = list(dict.fromkeys(train))  # the reference repeats some sentences across topics
    seen = set(train)
    return train, [s for s in dict.fromkeys(test) if s not in seen]


def sentences(batch_size: int = 16, seed: int = 0, length: int = 32, limit: int | None = 512):
    """(train, test) loaders of ``(input_ids, attention_mask)`` for all-MiniLM-L6-v2 (extra ``hf``),
    ``limit`` sentences of each at most (None: all)."""
    from onefit.zoo.minilm import minilm_tokenizer, tokenize

    tokenizer = minilm_tokenizer()
    train, test = reference_sentences()
    generator = torch.Generator().manual_seed(seed)

    def loader(texts: list[str], shuffle: bool) -> DataLoader:
        texts = texts[:limit] if limit else texts
        ids, mask = tokenize(tokenizer, texts, length)
        return DataLoader(TensorDataset(ids, mask), batch_size=batch_size, shuffle=shuffle, generator=generator)

    return loader(train, True), loader(test, False)
