"""Parameter and MAC counts of an arch, from the family's plan alone (no forward pass).

MACs count the multiply-accumulates of Linear, convolution and attention layers and of traced
attention products (q·k and attention·v), the same operations ``torch.utils.flop_counter``
counts (it reports 2 FLOPs per MAC). Hugging Face encoders are not traced: their attention
products are left out. Norms, activations and pooling are left out, as there. Layers onefit
keeps whole count their full parameters and no MACs. Parameters held directly by a non-layer module (a class token, say) count in full.

``weight_bytes`` stores a parameter in 4 bytes, except the weights of a layer running at b < 32
bits: b/8 bytes each, packed (a layer's weights rounded up to whole bytes), plus one fp32 scale
per output channel. Activation ranges (two numbers a layer) are left out.

A factorized layer at rank r counts ``r (in k + out)`` weights (+ bias) and that times its output
positions in MACs, or the dense layer's where that is cheaper (``onefit.elastic.lowrank``).

>>> import torch, onefit
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
>>> c = costs(family, {"width:1": 8})  # 64 -> 8 -> 10, with an 8-wide batch norm
>>> c["params"], c["macs"]
(626, 592)
"""

from __future__ import annotations

from typing import Any, Mapping

from onefit.elastic.base import layer_cost
from onefit.elastic.ties import split_name


def _bound(owner: str, layers) -> bool:
    """Whether the module ``owner`` is, or sits inside, a layer the plan counts."""
    while owner:
        if owner in layers:
            return True
        owner = owner.rpartition(".")[0]
    return "" in layers


def layer_costs(family, arch: Mapping[str, Any]) -> list[dict]:
    """Per active bound layer: name, kind, params, macs, positions, input and output elements, and the
    bytes its parameters take at the arch's bit-width. The layer's own ``cost`` gives params and
    MACs at its width; each dimension kind then adjusts what it changes (rank the factors, bits the
    bytes)."""
    arch = family.space.complete(arch)
    sizes, skipped = family.layer_sizes(arch), family.skipped(arch)
    rows = {}
    for name, layer in family.plan.layers.items():
        if f"{name}.".startswith(skipped):
            continue
        n_in, n_out = sizes[name]
        positions = (layer.positions, layer.in_positions) if layer.kind == "mha" else layer.positions
        p, m = layer_cost(family.module.get_submodule(name), layer.kind, n_in, n_out, positions)
        rows[name] = {"name": name, "kind": layer.kind, "params": p, "macs": m, "positions": layer.positions,
                      "elements": layer.in_positions * n_in + layer.positions * n_out, "bytes": 4 * p,
                      "n_in": n_in, "n_out": n_out, "positions_all": positions}
    for kind in family.kinds:
        kind.cost_(family, arch, rows)
    _count_tied_once(family, rows)
    for row in rows.values():
        del row["n_in"], row["n_out"], row["positions_all"]  # what the kinds needed, not part of the row
    return list(rows.values())


def _count_tied_once(family, rows: dict[str, dict]) -> None:
    """A weight several active layers hold (tied embeddings) counts in the first one's row only."""
    for names in family.plan.tied:
        holders = [(split_name(n)[0], n) for n in names if split_name(n)[0] in rows]
        for layer, name in holders[1:]:
            row = rows[layer]
            shared = row["n_in"] * row["n_out"] if row["kind"] in ("linear", "embedding") else \
                family.module.get_parameter(name).numel()
            row["params"] -= shared
            row["bytes"] -= 4 * shared


def costs(family, arch: Mapping[str, Any]) -> dict[str, int]:
    """Costs of the sub-model ``arch``, per sample where it matters:

    params, macs; weight_bytes (4 bytes a parameter, fewer for low-bit weights); layers (active Linear, conv and
    attention layers); activation_bytes, an estimate of peak activation memory: the largest input plus
    output of any one layer, at 4 bytes an element.
    """
    arch = family.space.complete(arch)
    skipped = family.skipped(arch)
    rows = layer_costs(family, arch)
    computing = [r for r in rows if r["kind"] in ("linear", "conv", "conv_pass", "mha")]
    params, macs = sum(r["params"] for r in rows), sum(r["macs"] for r in rows)
    weight_bytes = sum(r["bytes"] for r in rows)
    widths = family.widths(arch)
    for op in family.plan.ops:  # attention products: they scale with the number of heads
        group = family.plan.groups.get(op.group)  # None: a fixed cost (the op reads a concatenation)
        if not f"{op.owner}.".startswith(skipped):
            macs += op.macs if group is None else op.macs * widths[op.group] // group.size
    counted = {names[0] for names in family.plan.tied  # a tied weight a bound layer holds is in its row
               if any(_bound(split_name(n)[0], family.plan.layers) for n in names)}
    for name, param in family.module.named_parameters():
        owner = name.rpartition(".")[0]
        if name not in counted and not _bound(owner, family.plan.layers) and not f"{owner}.".startswith(skipped):
            params += param.numel()
            weight_bytes += 4 * param.numel()
    return {"params": params, "macs": macs, "weight_bytes": weight_bytes, "layers": len(computing),
            "activation_bytes": 4 * max((r["elements"] for r in computing), default=0)}


def count_params(family, arch: Mapping[str, Any]) -> int:
    return costs(family, arch)["params"]


def count_macs(family, arch: Mapping[str, Any]) -> int:
    return costs(family, arch)["macs"]
