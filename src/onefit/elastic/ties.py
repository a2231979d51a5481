"""Tied weights: one tensor held by several layers, as a language model's output layer shares its
input embedding (``out.weight = emb.weight``, ``tie_word_embeddings``).

The layers holding it shrink together (their groups on each axis of the tensor are one), the
tensor is permuted once when channels are sorted, counted once, saved once (the other names are
aliases in the manifest) and stays one tensor in an extracted sub-model.

>>> from torch import nn
>>> model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "out": nn.Linear(4, 10, bias=False)})
>>> model.out.weight = model.emb.weight
>>> tied_parameters(model)
[('emb.weight', 'out.weight')]
"""

from __future__ import annotations

from torch import nn


def tied_parameters(model: nn.Module) -> list[tuple[str, ...]]:
    """Every parameter held under more than one name, as its names (the first is the one the
    model's ``state_dict`` lists first)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [tuple(v) for v in names.values() if len(v) > 1]


def aliases(model: nn.Module) -> dict[str, str]:
    """``{name: first name}`` for every second and later name of a tied parameter."""
    return {alias: names[0] for names in tied_parameters(model) for alias in names[1:]}


def tied_layers(tied: list[tuple[str, ...]]) -> dict[str, str]:
    """``{layer: why}`` for every layer holding a tied weight: such a layer stays one tensor with
    the others, so it is neither factorized nor quantized on its own."""
    return {split_name(name)[0]: f"its weight is tied to {', '.join(n for n in names if n != name)}"
            for names in tied for name in names}


def split_name(name: str) -> tuple[str, str]:
    """("module path", "attribute") of a parameter's name."""
    module, _, attr = name.rpartition(".")
    return module, attr


def retie_(model: nn.Module, ties: list[tuple[str, ...]], skipped: tuple[str, ...] = ()) -> None:
    """Make each tie of ``ties`` one tensor again in ``model`` (a copy whose layers were replaced
    by smaller ones): every later holder takes the first holder's tensor. Holders in blocks a
    sub-model leaves out (``skipped`` name prefixes) are passed over."""
    for names in ties:
        kept = [n for n in names if not f"{n}.".startswith(skipped)]
        if len(kept) < 2:
            continue
        first_module, first_attr = split_name(kept[0])
        tensor = getattr(model.get_submodule(first_module), first_attr)
        for name in kept[1:]:
            module, attr = split_name(name)
            holder = model.get_submodule(module)
            if getattr(holder, attr).shape != tensor.shape:
                raise AssertionError(f"tied weights {kept[0]} and {name} were extracted at different shapes "
                                     f"{tuple(tensor.shape)} and {tuple(getattr(holder, attr).shape)}")
            setattr(holder, attr, tensor)
