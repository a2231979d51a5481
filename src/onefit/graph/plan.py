"""The result of coupling analysis: width groups, the layers bound to them, and depth stages.

A ``Plan`` is everything the rest of onefit needs to know about a model's structure: the family
activates, extracts, sorts and counts from it alone, so a better analysis only has to produce a
better plan.

>>> Group(0, size=64, producers=["fc1"]).name, Group(1, size=64, multiple=16, producers=["attn"], kind="heads").elastic
('width:fc1', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Group:
    """Channels that must shrink together, e.g. every output that meets at a residual add."""

    id: int
    size: int
    multiple: int = 1  # widths must be multiples of this (grouped convolutions)
    frozen: str | None = None  # why this group keeps its full size, or None if elastic
    producers: list[str] = field(default_factory=list)  # layers whose outputs are these channels
    kind: str = "width"  # "heads" / "kv": channels come in heads of `multiple` channels, chosen by head count
    label: str | None = None  # name of its dimension after the kind; the first producer by default
    tie: str | None = None  # the label it shares with its peers under ElasticConfig(uniform=True)

    @property
    def name(self) -> str:
        label = self.label or (self.producers[0] if self.producers else f"group{self.id}")
        return f"{self.kind}:{label}"

    @property
    def elastic(self) -> bool:
        return self.frozen is None and bool(self.producers) and self.size > self.multiple


@dataclass
class LayerPlan:
    """How one layer with weights is bound to groups.

    kind: ``linear`` / ``conv`` produce ``out_group`` from ``in_group``; ``mha`` is an attention whose
    heads are ``out_group`` (its embedding width stays whole); ``conv_pass`` (grouped,
    depthwise) and ``norm`` pass their input group through; ``other`` is a layer onefit cannot
    slice and keeps whole (``reason`` says why).
    """

    name: str
    kind: str
    in_group: int | None  # None: input width is fixed
    out_group: int | None  # None: output width is fixed
    in_unit: int = 1  # input features per channel (a flattened C x H x W map has H*W)
    positions: int = 1  # output positions per sample (H*W for a conv, tokens for a Linear)
    reason: str | None = None
    in_positions: int = 1  # input positions per sample (input elements = in_positions * input features)
    segments: int = 1  # a fused projection (GPT-2's q|k|v) has out_group's width once per segment
    # Input made of concatenated groups, ((group or None if fixed, full size), ...), instead of in_group
    in_segments: tuple = ()
    options: dict = field(default_factory=dict)  # how the model calls it (e.g. an attention's need_weights)
    in_fixed: str = ""  # with in_group None: why the input width is fixed ("model input", an op upstream)
    # A group counting whole segments (outputs) or parts (in_segments) kept: its active width //
    # its multiple (the key/value heads kept, each with its query heads); None: all of them
    segment_group: int | None = None


@dataclass
class StagePlan:
    """A sequential stage whose blocks ``min_depth`` and later can be skipped."""

    name: str
    blocks: int
    min_depth: int

    @property
    def dim_name(self) -> str:
        return f"depth:{self.name}"


@dataclass
class OpCost:
    """Multiply-adds of a weightless op (an attention product) that scale with one group's width
    (``group``), or of a fixed cost (``group`` None: the op reads a concatenation)."""

    owner: str  # the module whose forward runs it, to skip it with its block
    group: int | None
    macs: int  # per sample, at the group's full width


@dataclass
class Plan:
    groups: dict[int, Group]
    layers: dict[str, LayerPlan]
    stages: list[StagePlan]
    notes: list[str] = field(default_factory=list)  # ops that forced a group to stay whole
    ops: list[OpCost] = field(default_factory=list)
    # (module, attribute, group, per): attributes a module's forward reads that must follow a
    # width, set to the group's active width // per: GPT-2 attention's split_size (per 1), a
    # grouped-query attention's num_key_value_groups (per head size: heads per key/value group)
    bindings: list[tuple[str, str, int, int]] = field(default_factory=list)
    tied: list[tuple[str, ...]] = field(default_factory=list)  # names of each parameter several layers hold

    def group_of(self, name: str) -> Group | None:
        gid = self.layers[name].out_group
        return None if gid is None else self.groups[gid]
