"""Structured pruning adapters: one trained family carried to new tasks at every budget, learning
only a low-rank update per layer and the task's head (SPLoRA, Hedegaard et al. 2024).

``adapt(family)`` freezes the family and attaches a :class:`LowRankDelta` to each of its weighted
layers: the family's sub-models, computed on ``W + B A``, all share the one adapter set, whose
rank is the space's ``adapter:rank`` dimension. Train it as any family (the sandwich rule visits
the largest sub-model at the largest rank and the smallest at the smallest): only the adapters and
the head learn, batch-norm statistics stay the family's. ``extract(arch)`` gives a plain
sub-model with the update fused, no larger than one without adapters. Per task, ``save`` writes
the adapters and the head only (one safetensors file, with the family's digest, so an adapter
set cannot be loaded onto another family); ``detach_()`` gives the family back unchanged.

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),))
>>> weights = sum(p.numel() for p in family.parameters())
>>> adapters = onefit.adapt(family, ranks=(2, 4))
>>> family.space["adapter:rank"].choices, adapters.layers, adapters.head
((2, 4), ['1', '4'], '7')
>>> adapters.learned_parameters(), weights  # rank-4 adapters, norms and a new head, against every weight
(1098, 3594)
>>> adapters.detach_(); "adapter:rank" in family.space.names
False
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize

from onefit.checkpoint import atomic_write
from onefit.dims.adapter import DIMENSION, LowRankDelta
from onefit.elastic import ElasticConv, ElasticLinear
from onefit.space import Dimension, Space

FORMAT = "onefit-adapters/1"


class AdapterError(ValueError):
    """Adapters that do not fit: another family, another head, a rank a layer cannot take."""


def family_digest(family) -> str:
    """sha256 of the family's weights (parameters, by name, shape and bytes) and its space."""
    h = hashlib.sha256(json.dumps(family.space.to_json(), sort_keys=True).encode())
    for name, p in sorted(family.module.named_parameters()):
        tensor = p.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def _columns(layer: nn.Module) -> int:
    """Inputs of a layer's update: a Linear's inputs, a convolution's input channels per group."""
    return layer.weight.shape[1]


class Adapters:
    """The adapters attached to ``family`` for one task (see the module's docstring)."""

    def __init__(self, family, ranks: tuple[int, ...], layers: list[str], skipped: dict[str, str], head: str,
                 norms: list[str], digest: str, saved: dict):
        self.family, self.ranks, self.layers, self.skipped, self.head = family, ranks, layers, skipped, head
        self.norms, self.digest, self._saved = norms, digest, saved

    def deltas(self) -> dict[str, LowRankDelta]:
        return {name: self.family.module.get_submodule(name).parametrizations.weight[0] for name in self.layers}

    def head_module(self) -> nn.Module:
        return self.family.module.get_submodule(self.head)

    def _own(self) -> dict[str, nn.Parameter]:
        """What a task learns, by name: every adapter's A and B, the norms' scales and shifts
        (with ``norms``), the head's weight and bias."""
        own = {f"{name}.{part}": getattr(d, part) for part in ("A", "B") for name, d in self.deltas().items()}
        for name in [*self.norms, self.head]:
            module = self.family.module.get_submodule(name)
            own |= {f"{name}.{part}": getattr(module, part) for part in ("weight", "bias")
                    if getattr(module, part, None) is not None}
        return own

    def parameters(self) -> list[nn.Parameter]:
        return list(self._own().values())

    def learned_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in self._own().items()}

    def save(self, path) -> Path:
        """Write the adapters and the head to ``path`` (one safetensors file, atomically)."""
        path = Path(path)
        meta = {"format": FORMAT, "family": self.digest, "ranks": list(self.ranks), "layers": self.layers,
                "norms": self.norms, "head": self.head, "head_shape": list(self.head_module().weight.shape)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, safetensors.torch.save(self.state_dict(), metadata={"onefit": json.dumps(meta)}))
        return path

    def detach_(self) -> None:
        """Take the adapters off: the family's weights, head, batch-norm momentum and space as before."""
        family = self.family
        for name in self.layers:
            parametrize.remove_parametrizations(family.module.get_submodule(name), "weight", leave_parametrized=False)
        head = self.head_module()
        head.weight, head.bias, head.out_features = self._saved["head"]
        with torch.no_grad():
            for p, value in self._saved["norms"].items():
                p.copy_(value)
        for module, (momentum, tracked) in self._saved["momentum"].items():
            module.momentum = momentum
            if tracked is not None:
                module.num_batches_tracked.copy_(tracked)
        for p, flag in self._saved["requires_grad"].items():
            p.requires_grad_(flag)
        family.space = Space([d for d in family.space if d.name != DIMENSION])
        family.adapters = None


def _head_name(family) -> str:
    """The last Linear whose outputs are fixed (the model's output layer)."""
    smallest = family.layer_sizes(family.space.min())
    heads = [name for name in family.plan.layers if isinstance(family.module.get_submodule(name), ElasticLinear)
             and smallest[name][1] == family.module.get_submodule(name).out_features]
    if not heads:
        raise AdapterError("no head found: the family has no Linear layer with a fixed number of outputs; "
                           "name the task's head with head=")
    return heads[-1]


def adapt(family, ranks: Sequence[int] = (4, 8, 16), *, head: str | None = None, classes: int | None = None,
          layers: Sequence[str] | None = None, norms: bool = True, seed: int = 0) -> Adapters:
    """Freeze ``family`` and attach low-rank adapters of ``ranks`` (a dimension when more than one)
    to ``layers`` (by default every Linear and convolution except the head and tied weights, that
    can take the largest rank) and a new head of ``classes`` outputs (by default the head's own).
    With ``norms`` the task also learns its own scale and shift of every norm layer (a few
    parameters per channel; SPLoRA learns biases likewise). Returns the :class:`Adapters`; train
    with ``onefit.train(family, data, AdapterRecipe())``."""
    if getattr(family, "adapters", None) is not None:
        raise AdapterError("the family already has adapters attached; detach_() them first")
    ranks = tuple(sorted({int(r) for r in ranks}))
    if not ranks or ranks[0] < 1:
        raise AdapterError(f"ranks must be positive integers, got {ranks}")
    head = head or _head_name(family)
    if head not in family.plan.layers or not isinstance(family.module.get_submodule(head), ElasticLinear):
        raise AdapterError(f"head {head!r} is not one of the family's Linear layers: "
                           f"{[n for n in family.plan.layers if isinstance(family.module.get_submodule(n), ElasticLinear)]}")
    tied = {name for group in family.plan.tied for name in group}
    eligible = [n for n in family.plan.layers if n != head and n not in tied
                and isinstance(family.module.get_submodule(n), (ElasticLinear, ElasticConv))
                and isinstance(getattr(family.module.get_submodule(n), "weight", None), nn.Parameter)]
    skipped: dict[str, str] = {}
    if layers is None:
        chosen = []
        for name in eligible:
            layer = family.module.get_submodule(name)
            allowed = min(layer.weight.shape[0], _columns(layer))
            if ranks[-1] > allowed:
                skipped[name] = f"rank {ranks[-1]} is more than its update can have (at most {allowed})"
            else:
                chosen.append(name)
        if not chosen:
            raise AdapterError(f"no layer can take an adapter of rank {ranks[-1]}: {skipped}")
    else:
        chosen = list(layers)
        for name in chosen:
            if name not in eligible:
                raise AdapterError(f"layer {name!r} cannot take an adapter; allowed: {eligible}")
            layer = family.module.get_submodule(name)
            allowed = min(layer.weight.shape[0], _columns(layer))
            if ranks[-1] > allowed:
                raise AdapterError(f"rank {ranks[-1]} is too large for layer {name!r}: its update is "
                                   f"{layer.weight.shape[0]} x {_columns(layer)}, so at most rank {allowed}")
    digest = family_digest(family)
    requires = {p: p.requires_grad for p in family.module.parameters()}
    for p in family.module.parameters():
        p.requires_grad_(False)
    momentum = {m: (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                for m in family.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for m in momentum:
        m.momentum = 0.0  # batch statistics in training, the family's running statistics untouched
    torch.manual_seed(seed)
    for name in chosen:
        layer = family.module.get_submodule(name)
        parametrize.register_parametrization(
            layer, "weight", LowRankDelta(layer.weight.shape[0], _columns(layer), ranks[-1], tuple(layer.weight.shape)))
    module = family.module.get_submodule(head)
    saved = {"head": (module.weight, module.bias, module.out_features), "requires_grad": requires,
             "momentum": momentum, "norms": {}}
    fresh = nn.Linear(module.in_features, classes or module.out_features, bias=module.bias is not None)
    module.weight, module.bias, module.out_features = fresh.weight, fresh.bias, fresh.out_features
    norm_names = [n for n, layer in family.plan.layers.items() if layer.kind == "norm"
                  and getattr(family.module.get_submodule(n), "weight", None) is not None] if norms else []
    for name in norm_names:
        for p in (family.module.get_submodule(name).weight, family.module.get_submodule(name).bias):
            if p is not None:
                saved["norms"][p] = p.detach().clone()
                p.requires_grad_(True)
    adapters = Adapters(family, ranks, chosen, skipped, head, norm_names, digest, saved)
    family.adapters = adapters
    if len(ranks) > 1:
        family.space = Space([*family.space, Dimension(DIMENSION, "adapter", ranks)])
    return adapters


def load_adapters(family, path) -> Adapters:
    """Attach the adapters and head saved at ``path`` to ``family``; refused, naming why, when they
    were trained on another family or the file is not an adapter file."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("onefit", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, safetensors.SafetensorError, json.JSONDecodeError) as err:
        raise AdapterError(f"{path}: not a readable adapter file ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an onefit adapter file (no {FORMAT!r} metadata)")
    digest = family_digest(family)
    if meta["family"] != digest:
        raise AdapterError(f"{path}: these adapters were trained on another family (its digest "
                           f"{meta['family'][:12]}..., this family's {digest[:12]}...)")
    head_shape = meta["head_shape"]
    module = family.module.get_submodule(meta["head"])
    if head_shape[1] != module.in_features:
        raise AdapterError(f"{path}: its head reads {head_shape[1]} features, the family's {meta['head']} "
                           f"{module.in_features}")
    adapters = adapt(family, meta["ranks"], head=meta["head"], classes=head_shape[0], layers=meta["layers"],
                     norms=bool(meta.get("norms")))
    own = adapters.state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        adapters.detach_()
        raise AdapterError(f"{path}: its tensors do not match the adapters it describes")
    with torch.no_grad():
        for name, p in adapters._own().items():
            p.copy_(tensors[name])
    return adapters


def learned_parameters_of(family, arch) -> int:
    """Learned parameters a sub-model ``arch`` uses: its slice of every adapter and of the head."""
    adapters = family.adapters
    arch = family.space.complete(arch)
    rank = arch.get(DIMENSION, adapters.ranks[-1])
    sizes = family.layer_sizes(arch)
    skipped = family.skipped(arch)
    total = 0
    for name in adapters.layers:
        if f"{name}.".startswith(skipped):
            continue
        layer, (n_in, n_out) = family.module.get_submodule(name), sizes[name]
        per_group = n_in // getattr(layer, "groups", 1) if isinstance(layer, ElasticConv) else n_in
        total += rank * (n_out + per_group)
    for name in adapters.norms:
        if not f"{name}.".startswith(skipped):
            norm = family.module.get_submodule(name)
            total += sizes[name][1] * sum(getattr(norm, p, None) is not None for p in ("weight", "bias"))
    n_in, n_out = sizes[adapters.head]
    return total + n_in * n_out + (n_out if adapters.head_module().bias is not None else 0)


__all__ = ["AdapterError", "Adapters", "adapt", "family_digest", "learned_parameters_of", "load_adapters"]
