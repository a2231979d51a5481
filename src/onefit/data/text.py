"""English text that ships with CPython (the language reference in ``pydoc_data.topics``, 79
topics, about 465 KB): sentences for a sentence encoder, packed token blocks for a language
model; no download.

Topics, not sentences, are split between training and test (every seventh topic is held out), so
no test text comes from a topic the model was trained on (nor repeats a training sentence).

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


def reference_topics() -> tuple[list[str], list[str]]:
    """(training, test) topics of the language reference, whole (prose and code), split as the
    sentences are; a text the reference files under two topics stays on the training side."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    train = list(dict.fromkeys(topics[n] for i, n in enumerate(names) if i % 7 != 6))
    seen = set(train)
    return train, [t for t in dict.fromkeys(topics[n] for i, n in enumerate(names) if i % 7 == 6) if t not in seen]


def token_blocks(texts: list[str], tokenizer, length: int = 128, vocabulary: int | None = None) -> torch.Tensor:
    """Documents packed into ``(blocks, length)`` token ids, each document followed by the
    tokenizer's end-of-text token (as Minitron packs its calibration text); the tail that does not
    fill a block is dropped. ``vocabulary``: the model's, checked against the tokenizer's."""
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise ValueError(f"token_blocks: the tokenizer has {len(tokenizer)} tokens, the model's vocabulary "
                         f"{vocabulary}: they do not belong together")
    if length < 2:
        raise ValueError(f"token_blocks: a block needs at least 2 tokens (one to predict from), got length={length}")
    end = tokenizer.eos_token_id
    ids = [t for text in texts for t in tokenizer(text)["input_ids"] + ([end] if end is not None else [])]
    if len(ids) < length:
        raise ValueError(f"token_blocks: the text gives {len(ids)} tokens, fewer than one block of {length}; "
                         f"give more text or a shorter length")
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)


def pydoc_blocks(length: int = 128, batch_size: int = 4, limit: int | None = None, test_limit: int | None = 32,
                 seed: int = 0, tokenizer=None, vocabulary: int | None = None):
    """(train, test) loaders of packed ``(batch, length)`` token blocks of the language reference,
    by topic, tokenized for SmolLM2 (extra ``llm``) unless ``tokenizer`` is given; at most
    ``limit`` training and ``test_limit`` test blocks (None: all; the whole text is about 113 k
    SmolLM2 tokens)."""
    if tokenizer is None:
        from onefit.zoo.smollm2 import VOCABULARY, smollm2_tokenizer

        tokenizer, vocabulary = smollm2_tokenizer(), vocabulary or VOCABULARY
    train_topics, test_topics = reference_topics()
    train, test = (token_blocks(texts, tokenizer, length, vocabulary) for texts in (train_topics, test_topics))
    generator = torch.Generator().manual_seed(seed)
    train = train[torch.randperm(len(train), generator=generator)][:limit]
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator),
            DataLoader(test[:test_limit], batch_size=batch_size))


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
