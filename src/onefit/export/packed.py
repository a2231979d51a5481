"""Low-bit weights packed to their real size: b bits per weight, one fp32 scale per output channel.

The output channels lie along dimension 0 of a weight, except in transformers' ``Conv1D`` (GPT-2),
whose weight is (in, out): its scales are per column (``axis=1``), as ``onefit.elastic.quant`` bakes them.

ONNX Runtime and PyTorch on CPU have no kernels below 8 bits, so a 2-, 3- or 4-bit layer runs as
fp32 values holding its quantized levels; what it saves is storage. ``pack`` gives that storage
for an extracted sub-model (its baked uniform levels ``k * scale``, ``|k| <= 2^(b-1) - 1``, or at
8 bits ``|k| <= 64`` with ``reduce_range``, see ``onefit.elastic.quant``) and ``unpack_`` rebuilds the weights from it, so the size that
``onefit.costs(...)["weight_bytes"]`` reports is a size that really holds the model.

>>> import torch
>>> from onefit.elastic.quant import quantize_values
>>> layer = torch.nn.Linear(100, 3)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(quantize_values(layer.weight, 3))
>>> packed = pack(torch.nn.Sequential(layer), {"0": 3})
>>> packed.layers["0"].nbytes  # 300 weights x 3 bits, 3 scales, 3 biases
137
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from onefit.elastic.quant import FULL, REDUCED_QMAX, check_bits, weight_layer


@dataclass
class PackedLayer:
    bits: int
    shape: tuple[int, ...]
    codes: bytes  # offset-binary codes k + qmax, b bits each, packed big-endian into bytes
    scales: np.ndarray  # (out,) float32
    bias: np.ndarray | None  # float32, as it is
    axis: int = 0  # the weight's output-channel dimension: one scale per index along it
    qmax: int = 0  # the largest level |k|; 0: 2^(bits-1) - 1 (64 for 8-bit weights on the reduced range)

    def __post_init__(self) -> None:
        self.qmax = self.qmax or 2 ** (self.bits - 1) - 1

    @property
    def nbytes(self) -> int:
        return len(self.codes) + self.scales.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def weight(self) -> torch.Tensor:
        qmax = self.qmax
        count = int(np.prod(self.shape))
        bits = np.unpackbits(np.frombuffer(self.codes, np.uint8))[: count * self.bits].reshape(count, self.bits)
        codes = (bits.astype(np.int64) << np.arange(self.bits - 1, -1, -1)).sum(1) - qmax
        moved = (self.shape[self.axis],) + tuple(n for d, n in enumerate(self.shape) if d != self.axis)
        levels = torch.from_numpy(codes.reshape(moved[0], -1)).float()  # (out, everything else)
        return (levels * torch.from_numpy(self.scales)[:, None]).reshape(moved).movedim(0, self.axis)


@dataclass
class PackedWeights:
    layers: dict[str, PackedLayer]

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers.values())


def pack_layer(weight: torch.Tensor, bias: torch.Tensor | None, bits: int, axis: int = 0) -> PackedLayer:
    """Pack a weight that holds uniform ``bits``-bit levels per output channel, the channels along
    ``axis`` (as extraction bakes them; at 8 bits on either range)."""
    if check_bits(bits) == FULL:
        raise ValueError("pack: a 32-bit layer has nothing to pack")
    axis %= weight.dim()
    flat = weight.detach().float().cpu().movedim(axis, 0).flatten(1)  # (out, in * kernel)
    amax = flat.abs().amax(1)
    for qmax in (2 ** (bits - 1) - 1,) + ((REDUCED_QMAX,) if bits == 8 else ()):
        scales = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        codes = torch.round(flat / scales[:, None])
        if (codes * scales[:, None] - flat).abs().max() <= 1e-5 * max(amax.max().item(), 1e-12):
            break
    else:
        raise ValueError(f"pack: the weights do not hold {bits}-bit levels; extract the sub-model at {bits} bits first")
    offset = (codes.clamp(-qmax, qmax) + qmax).to(torch.int64).flatten().numpy()  # (count,) in [0, 2 qmax]
    bit_rows = (offset[:, None] >> np.arange(bits - 1, -1, -1)) & 1  # (count, bits), most significant first
    return PackedLayer(bits, tuple(weight.shape), np.packbits(bit_rows.astype(np.uint8)).tobytes(),
                       scales.numpy().astype(np.float32),
                       None if bias is None else bias.detach().float().cpu().numpy(), axis, qmax)


def _out_axis(layer: nn.Module) -> int:
    """transformers' Conv1D stores its weight (in, out); every other layer (out, in, ...)."""
    return 1 if type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") else 0


def pack(module: nn.Module, bits: Mapping[str, int]) -> PackedWeights:
    """Pack every layer of ``module`` that ``bits`` (e.g. ``family.bits(arch)``) sets below 32 bits."""
    layers = {}
    for name, b in bits.items():
        if b < FULL:
            layer = weight_layer(module.get_submodule(name))
            layers[name] = pack_layer(layer.weight, getattr(layer, "bias", None), b, _out_axis(layer))
    return PackedWeights(layers)


@torch.no_grad()
def unpack_(module: nn.Module, packed: PackedWeights) -> nn.Module:
    """Write the packed weights and biases back into ``module``'s layers (in place)."""
    for name, layer in packed.layers.items():
        target = weight_layer(module.get_submodule(name))
        target.weight.copy_(layer.weight())
        if layer.bias is not None:
            target.bias.copy_(torch.from_numpy(layer.bias))
    return module
