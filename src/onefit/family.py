"""The Family: one set of weights holding every nested sub-model of a space.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
>>> family = elasticize(model, (torch.randn(2, 4),))
>>> family.space.names
['width:0']
>>> with family.activate({"width:0": 8}):
...     y = family(torch.randn(2, 4))
>>> family.extract({"width:0": 8})[0].out_features
8
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from onefit.config import ElasticConfig
from onefit.elastic import ElasticModuleList, ElasticSequential, to_elastic
from onefit.elastic.lowrank import factorize_
from onefit.elastic.quant import ActivationQuantizer, quantize_plain
from onefit.elastic.registry import elastic_type_for
from onefit.graph import Plan, analyze
from onefit.space import Arch, Dimension, Space

QUANTIZABLE = ("linear", "conv", "conv_pass")  # attention (mha) keeps full-precision weights
FACTORIZABLE = ("linear", "conv", "conv_pass")  # what rank_layers may name (grouped convs stay dense: rank_notes)


class Family(nn.Module):
    """An elastic network: ``module`` holds the largest weights, ``space`` names its sub-models."""

    def __init__(self, module: nn.Module, plan: Plan, config: ElasticConfig, example_inputs: tuple):
        super().__init__()
        self.module = module
        self.training = module.training  # the family starts in the mode of the model it wraps
        self.plan = plan
        self.config = config
        self.example_inputs = example_inputs
        self.source: dict[str, Any] | None = None  # how to rebuild the original model, for load()
        self.history: list[dict] = []  # training records, saved with the family
        self.latency_models: dict = {}  # "backend-bBATCH" -> LatencyModel, saved with the family
        # Layers factorized as U V with a ``rank:<layer name>`` dimension; the others a rank setting
        # names stay dense, and ``rank_notes`` says why (onefit.inspect shows it). Factorized layers
        # keep full precision: they have no bits dimension.
        self.factorized, self.rank_notes = factorize_(module, plan, config)
        # Layers that can take a bits dimension: ``bits:<layer name>``.
        self.quantizable = [layer.name for layer in plan.layers.values() if layer.kind in QUANTIZABLE
                            and hasattr(module.get_submodule(layer.name), "active_bits")]
        config.check_patterns(list(plan.layers), self.quantizable,
                              [layer.name for layer in plan.layers.values() if layer.kind in FACTORIZABLE])
        dims = [
            Dimension(g.name, g.kind, config.choices(g.size, g.multiple, g.producers, g.kind))
            for g in plan.groups.values()
            if g.elastic
        ]
        dims += [Dimension(s.dim_name, "depth", config.depth_choices(s.min_depth, s.blocks)) for s in plan.stages]
        dims += [Dimension(f"bits:{name}", "bits", config.bits_choices(name)) for name in self.quantizable]
        dims += [Dimension(f"rank:{n}", "rank", module.get_submodule(n).rank_choices) for n in self.factorized]
        self.space = Space([d for d in dims if len(d.choices) > 1])
        if config.activation_bits is not None:
            self._add_input_quantizers(config.activation_bits)

    def _add_input_quantizers(self, bits: int) -> None:
        """Give every layer with a bits dimension an input quantizer (its range is a saved buffer)."""
        for name in self.quantizable:
            if f"bits:{name}" in self.space.names:
                layer = self.module.get_submodule(name)
                layer.input_quant = ActivationQuantizer(bits, name).to(layer.weight.device)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    # -- which sub-model runs ------------------------------------------------------------------
    def widths(self, arch: Mapping[str, Any]) -> dict[int, int]:
        """Active width in channels of every group (frozen and non-elastic groups at full size)."""
        scale = {gid: g.multiple if g.kind == "heads" else 1 for gid, g in self.plan.groups.items()}
        return {gid: arch[g.name] * scale[gid] if g.name in arch else g.size for gid, g in self.plan.groups.items()}

    def depths(self, arch: Mapping[str, Any]) -> dict[str, int]:
        return {s.name: arch.get(s.dim_name, s.blocks) for s in self.plan.stages}

    def ranks(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Rank of every factorized layer with a rank dimension in ``arch``."""
        return {name: arch[f"rank:{name}"] for name in self.factorized if f"rank:{name}" in arch}

    def bits(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Weight bit-width of every layer with a bits dimension in ``arch``; the others run at 32.
        Layers in blocks that ``arch`` skips are left out: they are not in the sub-model."""
        skipped = self.skipped(self.space.complete(arch)) if self.plan.stages else ()
        return {name: arch[f"bits:{name}"] for name in self.quantizable
                if f"bits:{name}" in arch and not f"{name}.".startswith(skipped)}

    def _assignments(self, arch: Arch) -> list[tuple[nn.Module, str, Any]]:
        """(module, attribute, value) settings that make the family compute ``arch``."""
        widths, depths = self.widths(arch), self.depths(arch)
        settings = [(self.module.get_submodule(layer.name), "active_out", widths.get(layer.out_group))
                    for layer in self.plan.layers.values() if layer.kind in ("linear", "conv", "mha")]
        settings += [(self.module.get_submodule(s.name), "active_depth", depths[s.name]) for s in self.plan.stages]
        settings += [(self.module.get_submodule(m), attr, widths[g]) for m, attr, g in self.plan.bindings]
        settings += [(self.module.get_submodule(layer.name), "in_index", self.input_index(layer, widths))
                     for layer in self.plan.layers.values() if layer.in_segments]
        settings += [(self.module.get_submodule(name), "active_bits", b) for name, b in self.bits(arch).items()]
        settings += [(self.module.get_submodule(name), "active_rank", r) for name, r in self.ranks(arch).items()]
        return settings

    @staticmethod
    def input_index(layer, widths: dict[int, int]):
        """Input channels a layer reading a concatenation keeps: each part's first channels."""
        parts, offset = [], 0
        for group, size in layer.in_segments:
            width = size if group is None else widths[group]
            parts.append(torch.arange(offset, offset + width))
            offset += size
        return torch.cat(parts)

    @contextlib.contextmanager
    def activate(self, arch: Mapping[str, Any]) -> Iterator[Arch]:
        """Run the sub-model ``arch`` inside the block; the previous one is restored on exit.

        Dimensions left out of ``arch`` take their largest value.
        """
        arch = self.space.complete(arch)
        assignments = self._assignments(arch)
        saved = [(module, attr, getattr(module, attr)) for module, attr, _ in assignments]
        try:
            for module, attr, value in assignments:
                setattr(module, attr, value)
            yield arch
        finally:
            for module, attr, value in saved:
                setattr(module, attr, value)

    def idle(self, arch: Mapping[str, Any]) -> set[str]:
        """Dimensions that cannot change the sub-model ``arch``: the widths, bits and ranks (and
        nested depths) of layers that lie only in blocks ``arch`` skips."""
        skipped = self.skipped(arch) if self.plan.stages else ()
        if not skipped:
            return set()

        def gone(name: str) -> bool:
            return f"{name}.".startswith(skipped)

        live = {g for layer in self.plan.layers.values() if not gone(layer.name)
                for g in (layer.in_group, layer.out_group, *(g for g, _ in layer.in_segments))}
        live |= {g for module, _, g in self.plan.bindings if not gone(module)}
        return ({g.name for gid, g in self.plan.groups.items() if gid not in live}
                | {f"bits:{n}" for n in self.quantizable if gone(n)}
                | {f"rank:{n}" for n in self.factorized if gone(n)}
                | {s.dim_name for s in self.plan.stages if gone(s.name)}) & set(self.space.names)

    def canonical(self, arch: Mapping[str, Any]) -> Arch:
        """``arch`` with its idle dimensions at their largest value: two archs with the same
        canonical form are the same sub-model, so a search measures only one of them."""
        arch, top = self.space.complete(arch), self.space.max()
        idle = self.idle(arch)
        return {k: top[k] if k in idle else v for k, v in arch.items()}

    # -- extraction ----------------------------------------------------------------------------
    def layer_sizes(self, arch: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
        """(input features, output features) of every bound layer for ``arch``."""
        widths = self.widths(self.space.complete(arch))
        sizes = {}
        for layer in self.plan.layers.values():
            module = self.module.get_submodule(layer.name)
            full_in, full_out = _full_sizes(module)
            n_in = full_in if layer.in_group is None else widths[layer.in_group] * layer.in_unit
            n_out = full_out if layer.out_group is None else widths[layer.out_group] * layer.segments
            if layer.in_segments:
                n_in = len(self.input_index(layer, widths))
                n_out = n_in if layer.kind == "norm" else n_out
            sizes[layer.name] = (n_in, n_out)
        return sizes

    def skipped(self, arch: Mapping[str, Any]) -> tuple[str, ...]:
        """Name prefixes of the blocks ``arch`` skips: ``name.startswith(family.skipped(arch))``."""
        depths = self.depths(self.space.complete(arch))
        return tuple(f"{s.name}.{i}." for s in self.plan.stages for i in range(depths[s.name], s.blocks))

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """A plain ``nn.Module`` for ``arch`` with physically smaller tensors; it needs no onefit.

        Layers below 32 bits hold their quantized values as fp32 weights (fake quantization baked in).
        """
        arch = self.space.complete(arch)
        sub, skipped = copy.deepcopy(self.module), self.skipped(arch)
        widths, bits = self.widths(arch), self.bits(arch)
        for name, rank in self.ranks(arch).items():  # on the copy: its factorized layers extract at the arch's rank
            sub.get_submodule(name).active_rank = rank
        for name, (n_in, n_out) in self.layer_sizes(arch).items():
            layer, plan = sub.get_submodule(name), self.plan.layers[name]
            if not f"{name}.".startswith(skipped) and hasattr(layer, "to_plain"):
                index = self.input_index(plan, widths) if plan.in_segments else None
                plain = layer.to_plain(n_in, n_out) if index is None else layer.to_plain(n_in, n_out, in_index=index)
                _replace(sub, name, quantize_plain(plain, layer, bits[name]) if name in bits else plain)
        for module, attr, group in self.plan.bindings:
            if not f"{module}.".startswith(skipped):
                setattr(sub.get_submodule(module), attr, widths[group])
        for stage in sorted(self.plan.stages, key=lambda s: -s.name.count(".")):
            _replace(sub, stage.name, sub.get_submodule(stage.name).to_plain(self.depths(arch)[stage.name]))
        return sub  # each module keeps its own train/eval mode

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write safetensors weights plus JSON metadata to ``directory`` (atomically)."""
        from onefit.checkpoint import save_family

        save_family(self, directory)

    def describe(self) -> dict:
        return {"config": asdict(self.config), "space": self.space.to_json(), "source": self.source}


def _full_sizes(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "in_channels"):
        return module.in_channels, module.out_channels
    if hasattr(module, "num_features"):
        return module.num_features, module.num_features
    if hasattr(module, "normalized_shape"):
        return module.normalized_shape[-1], module.normalized_shape[-1]
    if hasattr(module, "nx"):  # transformers' Conv1D
        return module.nx, module.nf
    if hasattr(module, "embed_dim"):  # attention: the embedding width in, the heads' width out
        return module.embed_dim, module.embed_dim
    return 0, 0


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` in place of the module called ``name``, in the train/eval mode of the one it replaces."""
    parent, _, child = name.rpartition(".")
    new.training = root.get_submodule(name).training  # its own flag only; children keep theirs
    setattr(root.get_submodule(parent) if parent else root, child, new)


def elasticize(
    model: nn.Module,
    example_inputs: tuple,
    config: ElasticConfig | None = None,
) -> Family:
    """Turn ``model`` into a Family. ``model`` itself is not changed.

    ``example_inputs`` is the tuple of positional inputs of one forward call; it is used to trace
    the model and to learn every tensor's shape.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"elasticize needs an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    config = config or ElasticConfig()
    module = copy.deepcopy(model)
    plan = analyze(module, tuple(example_inputs))
    for layer in plan.layers.values():
        plain = module.get_submodule(layer.name)
        if layer.kind != "other" and elastic_type_for(plain) is not None:
            elastic = to_elastic(plain)
            if layer.segments > 1:
                elastic.segments = layer.segments
            if layer.options:
                elastic.call_options = layer.options
            _replace(module, layer.name, elastic)
    for stage in plan.stages:
        plain = module.get_submodule(stage.name)
        elastic = ElasticModuleList if isinstance(plain, nn.ModuleList) else ElasticSequential
        _replace(module, stage.name, elastic.from_plain(plain))
    family = Family(module, plan, config, tuple(example_inputs))
    from onefit.zoo import source

    family.source = source(model)  # a zoo model rebuilds from its factory on load()
    if len(family.space) == 0:
        reasons = sorted({g.frozen for g in plan.groups.values() if g.frozen} | set(plan.notes))
        raise ValueError(
            f"{type(model).__name__} has nothing onefit can shrink. Reasons: {reasons or ['no Linear or Conv layers']}"
        )
    return family
