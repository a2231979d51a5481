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
import warnings
from dataclasses import asdict
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from onefit.config import ElasticConfig
from onefit.dims import KINDS
from onefit.elastic import ElasticModuleList, ElasticSequential, to_elastic
from onefit.elastic.attention import standard_paths_
from onefit.elastic.base import full_sizes
from onefit.elastic.registry import elastic_type_for, replace_module
from onefit.elastic.ties import retie_
from onefit.graph import Plan, analyze
from onefit.space import Arch, Space

COUNTED = ("heads", "kv")  # kinds whose choices count heads of `multiple` channels, not channels


class Family(nn.Module):
    """An elastic network: ``module`` holds the largest weights, ``space`` names its sub-models.

    The dimensions come from the registered kinds (``onefit.dims``): each builds its own, sets
    what an arch needs on the modules, names what an arch leaves idle, extracts and costs itself.
    """

    def __init__(self, module: nn.Module, plan: Plan, config: ElasticConfig, example_inputs: tuple):
        super().__init__()
        self.module = module
        self.training = module.training  # the family starts in the mode of the model it wraps
        self.plan = plan
        self.config = config
        self.example_inputs = example_inputs
        self.source: dict[str, Any] | None = None  # how to rebuild the original model, for load()
        self.history: list[dict] = []  # training records, saved with the family
        self.space_history: list[dict] = []  # every restriction of the space (restrict_), saved with it
        self.depth_order: dict[str, list[int]] = {}  # block rankings of depth stages (rank_blocks_), saved
        self.latency_models: dict = {}  # "backend-bBATCH" -> LatencyModel, saved with the family
        self.quantizable: list[str] = []  # layers that can take a bits dimension (the bits kind sets them)
        self.factorized: list[str] = []  # layers factorized as U V for a rank dimension (the rank kind)
        self.rank_notes: dict[str, str] = {}  # layers a rank setting names that stay dense, and why
        self.kinds = [kind() for kind in KINDS.values()]
        for kind in self.kinds:
            kind.setup_(self)
        dims = [d for kind in self.kinds for d in kind.dimensions(self)]
        self.space = Space([d for d in dims if len(d.choices) > 1])
        for kind in self.kinds:
            kind.finish_(self)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def kind(self, name: str):
        """The handler of the dimension kind ``name`` (``onefit.dims``)."""
        for kind in self.kinds:
            if name in kind.names:
                return kind
        raise KeyError(f"no dimension kind {name!r}; registered: {[k.names for k in self.kinds]}")

    def restrict_(self, space: Space, by: str) -> None:
        """Give the family a smaller space (some choices dropped: progressive shrinking of ranks,
        say). Spaces are immutable: this replaces the space, after checking it is the current one
        with choices left out, and records the change in ``space_history`` (saved with the family)."""
        if not is_restriction(space, self.space):
            raise ValueError(f"restrict_: {space} is not {self.space} with choices left out")
        changed = {d.name: list(d.choices) for d in space if d.choices != self.space[d.name].choices}
        if changed:
            self.space = space
            self.space_history.append({"by": by, "choices": changed})

    def rank_blocks_(self, order: Mapping[str, Sequence[int]]) -> None:
        """Rank the blocks of depth stages, most important first (``onefit.order_depth_`` measures
        it): a depth d then runs the d best ranked blocks, in their original order. Only a
        ``ModuleList`` stage (a transformer's layers) can be ranked; a stage left out keeps its
        order (the first d)."""
        from onefit.elastic.depth import ElasticModuleList

        stages = {s.name: s for s in self.plan.stages}
        for name, ranking in order.items():
            stage = self.module.get_submodule(name) if name in stages else None
            if not isinstance(stage, ElasticModuleList):
                lists = sorted(n for n in stages if isinstance(self.module.get_submodule(n), ElasticModuleList))
                raise ValueError(f"rank_blocks_: {name!r} is not a depth stage whose blocks can be ranked; those are "
                                 f"{lists}")
            if sorted(ranking) != list(range(stages[name].blocks)):
                raise ValueError(f"rank_blocks_: the ranking of {name!r} must order its {stages[name].blocks} blocks "
                                 f"0..{stages[name].blocks - 1}, each once; got {list(ranking)}")
        for name, ranking in order.items():
            self.module.get_submodule(name).order = tuple(int(i) for i in ranking)
        self.depth_order = {**self.depth_order, **{k: [int(i) for i in v] for k, v in order.items()}}

    # -- which sub-model runs ------------------------------------------------------------------
    def widths(self, arch: Mapping[str, Any]) -> dict[int, int]:
        """Active width in channels of every group (frozen and non-elastic groups at full size)."""
        scale = {gid: g.multiple if g.kind in COUNTED else 1 for gid, g in self.plan.groups.items()}
        return {gid: arch[g.name] * scale[gid] if g.name in arch else g.size for gid, g in self.plan.groups.items()}

    def depths(self, arch: Mapping[str, Any]) -> dict[str, int]:
        return {s.name: arch.get(s.dim_name, s.blocks) for s in self.plan.stages}

    def ranks(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Rank of every factorized layer with a rank dimension in ``arch`` (the rank kind's values)."""
        return self.kind("rank").values(self, arch)

    def bits(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Weight bit-width of every layer with a bits dimension in ``arch``; the others run at 32.
        Layers in blocks that ``arch`` skips are left out: they are not in the sub-model."""
        return self.kind("bits").values(self, arch)

    def _assignments(self, arch: Arch) -> list[tuple[nn.Module, str, Any]]:
        """(module, attribute, value) settings that make the family compute ``arch``."""
        return [setting for kind in self.kinds for setting in kind.settings(self, arch)]

    def parts(self, layer, widths: dict[int, int]) -> int:
        """How many of a layer's equal output segments (or input parts) a sub-model keeps: all,
        or as many as its segment group's active width holds (the key/value heads kept)."""
        if layer.segment_group is None:
            return len(layer.in_segments) if layer.in_segments else layer.segments
        return widths[layer.segment_group] // self.plan.groups[layer.segment_group].multiple

    def input_index(self, layer, widths: dict[int, int]):
        """Input channels a layer reading a concatenation keeps: each kept part's first channels."""
        parts, offset, kept = [], 0, self.parts(layer, widths)
        for i, (group, size) in enumerate(layer.in_segments):
            if i < kept:
                parts.append(torch.arange(offset, offset + (size if group is None else widths[group])))
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
        skipped = self.skipped(arch)
        if not skipped:
            return set()

        def gone(name: str) -> bool:
            return f"{name}.".startswith(skipped)

        return {d for kind in self.kinds for d in kind.idle(self, arch, gone)} & set(self.space.names)

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
            full_in, full_out = full_sizes(module)
            n_in = full_in if layer.in_group is None else widths[layer.in_group] * layer.in_unit
            segments = layer.segments if layer.in_segments else self.parts(layer, widths)  # output segments kept
            n_out = full_out if layer.out_group is None else widths[layer.out_group] * segments
            if layer.in_segments:
                n_in = len(self.input_index(layer, widths))
                n_out = n_in if layer.kind == "norm" else n_out
            sizes[layer.name] = (n_in, n_out)
        return sizes

    def skipped(self, arch: Mapping[str, Any]) -> tuple[str, ...]:
        """Name prefixes of the blocks ``arch`` skips: ``name.startswith(family.skipped(arch))``."""
        arch = self.space.complete(arch)
        return tuple(p for kind in self.kinds for p in kind.skipped(self, arch))

    def extract(self, arch: Mapping[str, Any]) -> nn.Module:
        """A plain ``nn.Module`` for ``arch`` with physically smaller tensors; it needs no onefit.

        Layers below 32 bits hold their quantized values as fp32 weights (fake quantization baked in).
        """
        arch = self.space.complete(arch)
        sub, skipped = copy.deepcopy(self.module), self.skipped(arch)
        widths = self.widths(arch)
        for kind in self.kinds:
            kind.before_extract_(self, sub, arch)
        for name, (n_in, n_out) in self.layer_sizes(arch).items():
            layer, plan = sub.get_submodule(name), self.plan.layers[name]
            if not f"{name}.".startswith(skipped) and hasattr(layer, "to_plain"):
                kwargs = {"in_index": self.input_index(plan, widths)} if plan.in_segments else {}
                if plan.segment_group is not None and not plan.in_segments:
                    kwargs["segments"] = self.parts(plan, widths)
                plain = layer.to_plain(n_in, n_out, **kwargs)
                for kind in self.kinds:
                    plain = kind.extract_layer(self, name, plain, arch)
                replace_module(sub, name, plain)
        retie_(sub, self.plan.tied, skipped)  # a weight several layers hold stays one tensor
        for module, attr, group, per in self.plan.bindings:
            if not f"{module}.".startswith(skipped):
                setattr(sub.get_submodule(module), attr, widths[group] // per)
        for kind in self.kinds:
            kind.after_extract_(self, sub, arch)
        from onefit.graph.transformers import match_config_

        why = match_config_(sub)  # a transformers model: its config describes the blocks kept
        if why:
            warnings.warn(f"extract: {why}", stacklevel=2)
        return sub  # each module keeps its own train/eval mode

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write safetensors weights plus JSON metadata to ``directory`` (atomically)."""
        from onefit.checkpoint import save_family

        if getattr(self, "adapters", None) is not None:
            raise ValueError("the family has adapters attached: save them with adapters.save(path), and the family "
                             "itself after adapters.detach_()")

        save_family(self, directory)

    def describe(self) -> dict:
        return {"config": asdict(self.config), "space": self.space.to_json(), "source": self.source}


def is_restriction(smaller: Space, larger: Space) -> bool:
    """Whether ``smaller`` is ``larger`` with some choices left out (same dimensions and kinds)."""
    return smaller.names == larger.names and all(
        a.kind == b.kind and set(a.choices) <= set(b.choices) for a, b in zip(smaller, larger))


def elasticize(
    model: nn.Module,
    example_inputs: tuple,
    config: ElasticConfig | None = None,
    *,
    copy_model: bool = True,
) -> Family:
    """Turn ``model`` into a Family. ``model`` itself is not changed, unless ``copy_model=False``:
    then its layers are replaced in place and the family holds ``model`` itself, which keeps a
    large model within its own memory (elastic layers share the weights they replace; a copy
    would double them).

    ``example_inputs`` is the tuple of positional inputs of one forward call; it is used to trace
    the model and to learn every tensor's shape. A model on the meta device (built under
    ``torch.device("meta")``, no weights allocated) gets its plan and coverage too, for
    ``onefit inspect`` of a model too large to hold.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"elasticize needs an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    config = config or ElasticConfig()
    from onefit.zoo import source

    recorded = source(model)  # a zoo model rebuilds from its factory on load(); before any change
    module = copy.deepcopy(model) if copy_model else model
    plan = analyze(module, tuple(example_inputs))
    if config.uniform:  # one dimension per tie: the blocks of a block list share their heads and FFN width
        for group in plan.groups.values():
            if group.tie is not None:
                group.label = group.tie
    for layer in plan.layers.values():
        plain = module.get_submodule(layer.name)
        if layer.kind != "other" and elastic_type_for(plain) is not None:
            elastic = to_elastic(plain)
            if layer.segments > 1:
                elastic.segments = layer.segments
            if layer.options:
                elastic.call_options = layer.options
            replace_module(module, layer.name, elastic)
    standard_paths_(module)
    for stage in plan.stages:
        plain = module.get_submodule(stage.name)
        elastic = ElasticModuleList if isinstance(plain, nn.ModuleList) else ElasticSequential
        replace_module(module, stage.name, elastic.from_plain(plain))
    family = Family(module, plan, config, tuple(example_inputs))
    family.source = recorded
    if len(family.space) == 0:
        reasons = sorted({g.frozen for g in plan.groups.values() if g.frozen} | set(plan.notes))
        raise ValueError(
            f"{type(model).__name__} has nothing onefit can shrink. Reasons: {reasons or ['no Linear or Conv layers']}"
        )
    return family
