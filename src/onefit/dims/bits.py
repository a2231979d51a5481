"""Bits: a ``bits:<layer>`` dimension per quantizable layer (its elastic type says ``quantizable``)
with the weight bit-widths ``ElasticConfig.bits`` / ``bits_layers`` give; 32 is full precision.
Extraction bakes the quantized values into fp32 weights; counts store a b-bit layer's weights in
b/8 bytes each (packed, rounded up to whole bytes) plus one fp32 scale per output channel.

>>> import torch, onefit
>>> config = onefit.ElasticConfig(width=(1.0,), depth=False, bits=(4, 8))
>>> family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),), config)
>>> family.space["bits:1"].choices, family.bits({"bits:1": 4})["1"]
((4, 8, 32), 4)
>>> param_bytes(torch.nn.Linear(64, 16), 64 * 16 + 16, 16, 4)  # 512 bytes of weights, 16 scales, 16 biases
640
"""

from __future__ import annotations

import math

from torch import nn

from onefit.dims.base import Kind, register_kind
from onefit.elastic.quant import ActivationQuantizer, quantize_plain
from onefit.elastic.ties import tied_layers
from onefit.space import Dimension

FULL = 32
SHARED = "bits"  # the one dimension of ElasticConfig(bits_shared=True)


def param_bytes(module: nn.Module, params: int, n_out: int, bits: int) -> int:
    """Bytes of a layer's ``params``: 4 each, but its weights at ``bits`` / 8 plus a scale per output."""
    if bits >= FULL:
        return 4 * params
    biases = n_out if getattr(module, "bias", None) is not None else 0
    weights = params - biases
    return math.ceil(weights * bits / 8) + 4 * n_out + 4 * biases


@register_kind
class BitsKind(Kind):
    names = ("bits",)

    def dimensions(self, family) -> list[Dimension]:
        # after setup_: a layer factorized for a rank dimension is no longer quantizable
        tied = tied_layers(family.plan.tied)  # a tied weight stays one tensor with its other holders
        family.quantizable = [layer.name for layer in family.plan.layers.values() if layer.kind != "other"
                              and layer.name not in tied
                              and getattr(family.module.get_submodule(layer.name), "quantizable", False)]
        config = family.config
        config.check_patterns("bits_layers", config.bits_layers, family.quantizable)
        dims = [Dimension(f"bits:{name}", "bits", config.bits_choices(name)) for name in family.quantizable]
        if not config.bits_shared:
            return dims
        choices = {d.choices for d in dims if len(d.choices) > 1}
        if len(choices) > 1:
            raise ValueError(f"ElasticConfig.bits_shared: one bits dimension for every layer needs the same "
                             f"bit-widths in each; the layers offer {sorted(choices)}")
        return [Dimension(SHARED, "bits", choices.pop())] if choices else []

    @staticmethod
    def _dim(family, name: str) -> str:
        """The dimension that sets layer ``name``'s bits: its own, or the shared one (``bits_shared``)."""
        shared = family.config.bits_shared and len(family.config.bits_choices(name)) > 1
        return SHARED if shared else f"bits:{name}"

    def finish_(self, family) -> None:
        """With ``activation_bits``, every layer with a bits dimension gets an input quantizer; with
        ``reduce_range``, its 8-bit weights take ONNX Runtime's reduced range."""
        config = family.config
        for name in family.quantizable:
            if self._dim(family, name) in family.space.names:
                layer = family.module.get_submodule(name)
                layer.reduce_range = config.reduce_range
                if config.activation_bits is not None:
                    layer.input_quant = ActivationQuantizer(config.activation_bits, name).to(layer.weight.device)

    def values(self, family, arch) -> dict[str, int]:
        """Bit-width of every layer with a bits dimension in ``arch``, leaving out the layers in
        blocks ``arch`` skips (they are not in the sub-model)."""
        skipped = family.skipped(arch)  # completes the arch itself
        return {name: arch[dim] for name in family.quantizable
                if (dim := self._dim(family, name)) in arch and not f"{name}.".startswith(skipped)}

    def settings(self, family, arch):
        return [(family.module.get_submodule(name), "active_bits", b) for name, b in self.values(family, arch).items()]

    def idle(self, family, arch, gone):
        dims: dict[str, bool] = {}  # dimension -> every layer it sets is gone
        for name in family.quantizable:
            dim = self._dim(family, name)
            dims[dim] = dims.get(dim, True) and gone(name)
        return {dim for dim, idle in dims.items() if idle}

    def extract_layer(self, family, name, plain, arch):
        bits = self.values(family, arch)
        return quantize_plain(plain, family.module.get_submodule(name), bits[name]) if name in bits else plain

    def cost_(self, family, arch, rows) -> None:
        for name, bits in self.values(family, arch).items():
            if name in rows:
                row = rows[name]
                row["bytes"] = param_bytes(family.module.get_submodule(name), row["params"], row["n_out"], bits)

    def columns(self, family, name):
        dim = self._dim(family, name)
        return {"bits": (f"{dim} {family.space[dim].choices}", True)} if dim in family.space.names else {}
