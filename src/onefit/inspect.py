"""Pre-flight inspection: what onefit can shrink in a model, what stays whole and why.

>>> import torch
>>> from onefit.zoo import resnet
>>> report = inspect(resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
>>> round(report.coverage, 3)  # every parameter lies in a layer with an elastic dimension
1.0
>>> stem = report.layers[0]
>>> (stem.name, stem.width_in, stem.width_out)
('stem.0', 'fixed (model input)', 'width:stem.0')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from onefit.config import ElasticConfig
from onefit.cost import costs


@dataclass
class LayerCoverage:
    name: str
    type: str
    params: int
    width_in: str  # the dimension that sets its input width, or why it is fixed
    width_out: str
    depth: str  # the depth dimension it can be skipped by, or ""
    elastic: bool
    # what the dimension kinds say of it, e.g. {"bits": "bits:fc1 (4, 8, 32)", "rank": "why it stays dense"}
    columns: dict = field(default_factory=dict)

    @property
    def bits(self) -> str:
        return self.columns.get("bits", "")

    @property
    def rank(self) -> str:
        return self.columns.get("rank", "")


@dataclass
class Coverage:
    layers: list[LayerCoverage]
    dimensions: dict[str, list]
    space_size: int
    params_min: int
    params_max: int
    weight_bytes_min: int = 0  # with bits dimensions, the smallest sub-model's weights also take fewer bytes
    weight_bytes_max: int = 0

    @property
    def coverage(self) -> float:
        """Share of the model's parameters in layers with at least one elastic dimension."""
        total = sum(layer.params for layer in self.layers)
        return sum(layer.params for layer in self.layers if layer.elastic) / max(total, 1)

    @property
    def reducible(self) -> float:
        """Share of the largest sub-model's parameters that the smallest one drops."""
        return 1 - self.params_min / max(self.params_max, 1)

    @property
    def columns(self) -> list[str]:
        """The kinds' columns some layer fills (bits only when bits are configured, and so on)."""
        return list(dict.fromkeys(col for layer in self.layers for col, text in layer.columns.items() if text))

    def to_json(self) -> dict:
        data = {**asdict(self), "coverage": self.coverage, "reducible": self.reducible}
        for row, layer in zip(data["layers"], self.layers):
            row.update(row.pop("columns"))  # {"bits": ..., "rank": ...} beside the other fields
            row.update({col: layer.columns.get(col, "") for col in self.columns})
        return data

    def __str__(self) -> str:  # print(onefit.inspect(model, inputs)) shows the table
        return self.to_markdown()

    def to_markdown(self) -> str:
        extra = self.columns
        lines = ["| layer | type | params | input width | output width | depth |" + "".join(f" {c} |" for c in extra),
                 "|---|---|---:|---|---|---|" + "---|" * len(extra)]
        lines += [f"| {l.name} | {l.type} | {l.params:,} | {l.width_in} | {l.width_out} | {l.depth} |"
                  + "".join(f" {l.columns.get(c, '')} |" for c in extra) for l in self.layers]
        lines.append(f"\n{self.space_size:,} sub-models, {self.params_min:,} to {self.params_max:,} params; "
                     f"{self.coverage:.1%} of parameters in elastic layers; the smallest drops {self.reducible:.1%}.")
        if "bits" in extra:
            lines[-1] += f" Weights take {self.weight_bytes_min:,} to {self.weight_bytes_max:,} bytes."
        return "\n".join(lines)


def _describe(family, gid: int | None, full: str) -> tuple[str, bool]:
    if gid is None:
        return f"fixed ({full})", False
    group = family.plan.groups[gid]
    if group.name in family.space.names:
        return group.name, True
    if group.kind == "hidden" and not group.frozen:
        return "fixed: the hidden size stays whole unless ElasticConfig(hidden=...) shrinks it", False
    if group.kind == "kv" and not group.frozen:
        return ("fixed: grouped-query attention keeps its key/value heads (the query heads shrink inside each "
                "group) unless ElasticConfig(kv_heads=...) drops whole groups"), False
    return f"fixed: {group.frozen or 'one choice only'}", False


def _describe_input(family, layer) -> tuple[str, bool]:
    """A layer's input: its group, or the groups of the concatenation it reads."""
    if not layer.in_segments:
        return _describe(family, layer.in_group, layer.in_fixed or "model input")
    parts = [_describe(family, g, "fixed part") for g, _ in layer.in_segments]
    return " + ".join(dict.fromkeys(text for text, _ in parts)), any(elastic for _, elastic in parts)


def inspect(model: nn.Module, example_inputs: tuple, config: ElasticConfig | None = None) -> Coverage:
    """Analyse ``model`` without training anything: every layer with weights, which of its
    dimensions are elastic, which are fixed and why, and the size of the resulting space."""
    from onefit.family import elasticize

    family = elasticize(model, example_inputs, config)
    stages = {s.name: s.dim_name for s in family.plan.stages if s.dim_name in family.space.names}
    rows = []
    for name, module in family.module.named_modules():
        if name in family.factorized:  # the dense layer's parameters, not the full-rank factors'
            module = model.get_submodule(name)
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if not own:
            continue
        layer = family.plan.layers.get(name)
        depth = next((dim for stage, dim in stages.items() if name.startswith(stage + ".")), "")
        if layer is None or layer.kind == "other":
            reason = layer.reason if layer else "parameters outside any traced layer"
            rows.append(LayerCoverage(name, _type_name(model, name), own, f"fixed: {reason}", f"fixed: {reason}",
                                      depth, bool(depth)))
            continue
        w_in, e_in = _describe_input(family, layer)
        w_out, e_out = _describe(family, layer.out_group, "full width")
        columns = {col: cell for kind in family.kinds for col, cell in kind.columns(family, name).items()}
        rows.append(LayerCoverage(name, _type_name(model, name), own, w_in, w_out, depth,
                                  e_in or e_out or bool(depth) or any(elastic for _, elastic in columns.values()),
                                  columns={col: text for col, (text, _) in columns.items()}))
    smallest, largest = costs(family, family.space.min()), costs(family, family.space.max())
    return Coverage(rows, {d.name: list(d.choices) for d in family.space}, family.space.size, smallest["params"],
                    largest["params"], smallest["weight_bytes"], largest["weight_bytes"])


def _type_name(model: nn.Module, name: str) -> str:
    try:
        return type(model.get_submodule(name)).__name__
    except AttributeError:
        return "?"
