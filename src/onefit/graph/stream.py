"""The residual stream of a transformer decoder as a width group (``ElasticConfig(hidden=...)``).

The stream is every tensor of the hidden size between the embeddings and the output head:
the embeddings write it (their columns), each block reads it (its norms and its query, key,
value and FFN input projections) and writes it (its attention output and FFN output
projections), the final norm normalises it and the head reads it. A narrower stream keeps the
same first channels in all of them (Minitron's embedding-channel pruning), and each norm
normalises over the channels that remain.

It shrinks only where every part is accounted for; otherwise it stays whole and the plan says
why. Checked: every module with weights inside a block is a projection of the layout or a norm;
every one beside the blocks is an embedding of the hidden size or a norm; the head reads the
final norm's own output (checked on the example by storage, so a head reading a pooled or
otherwise computed tensor of the same size is never sliced); a model whose output *is* the
stream (no head) keeps it, as its output size is part of its interface.

>>> is_norm(nn.LayerNorm(8)), is_norm(nn.RMSNorm(8)), is_norm(nn.Linear(8, 8))
(True, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from onefit.elastic.embedding import ElasticEmbedding
from onefit.elastic.norm import ElasticTransformersRMSNorm
from onefit.elastic.registry import elastic_type_for

# Decoders whose embeddings are scaled by the square root of the config's hidden size: a
# narrower sub-model's config would scale by another number than its family computed.
SCALED_EMBEDDINGS = ("gemma", "gemma2", "gemma3", "gemma3_text")


@dataclass
class Stream:
    embeddings: list[str]  # write the stream from token ids
    norms: list[str]  # every norm over the stream, in the blocks and after them
    readers: list[str]  # the head(s) reading the final norm's output


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or elastic_type_for(module) is ElasticTransformersRMSNorm


def _weighted(module: nn.Module, prefix: str) -> list[str]:
    """Names of the leaf modules holding weights of their own under ``module``."""
    return [".".join(p for p in (prefix, n) if p) for n, m in module.named_modules()
            if any(True for _ in m.parameters(recurse=False))]


def find_stream(model: nn.Module, path: str, hidden: int, parts: set[str], reads: dict[str, bool],
                allowed: str | None) -> Stream | str:
    """The parts of the stream around the block list at ``path``, or why it stays whole.

    ``parts``: the layout's projections (full names); ``reads``: for every Linear outside the
    model's base, whether it reads the final norm's output (observed on the example);
    ``allowed``: the layout's reason the stream cannot shrink, if it has one."""
    if allowed:
        return allowed
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in SCALED_EMBEDDINGS:
        return f"{model_type} scales its embeddings by the square root of the config's hidden size"
    base_path = path.rpartition(".")[0]
    base = model.get_submodule(base_path) if base_path else model
    blocks = model.get_submodule(path)
    norms = []
    for name in _weighted(blocks, path):
        module = model.get_submodule(name)
        if name not in parts and not is_norm(module):
            return f"{name} ({type(module).__name__}) sits in a block and is neither a projection nor a norm"
        if is_norm(module) and module.weight.shape[0] == hidden:
            norms.append(name)
    embeddings = []
    for name in _weighted(base, base_path):
        if f"{name}.".startswith(f"{path}."):
            continue
        module = model.get_submodule(name)
        if isinstance(module, nn.Embedding) and module.embedding_dim == hidden and not ElasticEmbedding.refuses(module):
            embeddings.append(name)
        elif is_norm(module) and module.weight.shape[0] == hidden:
            norms.append(name)
        else:
            return f"{name} ({type(module).__name__}) touches the stream in a way onefit does not follow"
    outside = [n for n in _weighted(model, "") if base_path and not f"{n}.".startswith(f"{base_path}.")]
    readers = [n for n in outside if reads.get(n)]
    if not embeddings or not readers:
        return "the model's output is its hidden states (no head reads them), whose size is kept" if embeddings \
            else "no embedding of the hidden size writes the stream"
    strangers = [n for n in outside if n not in readers and _in_features(model.get_submodule(n)) == hidden]
    if strangers:
        return f"{strangers[0]} reads a tensor of the hidden size other than the final norm's output"
    return Stream(embeddings, norms, readers)


def _in_features(module: nn.Module) -> int | None:
    return getattr(module, "in_features", None)
