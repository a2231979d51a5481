"""Fake quantization: the values a low-bit layer computes with, kept in floating point.

Weights are quantized symmetrically per output channel: ``scale = max|w| / (2^(b-1) - 1)`` over
the channel, ``q = clamp(round(w / scale), -(2^(b-1) - 1), 2^(b-1) - 1) * scale``. Symmetric
b-bit weights take 2^b - 1 levels (the level -2^(b-1) is left unused so zero sits in the middle);
at 2 bits that is {-1, 0, 1} * scale, a ternary network. 32 bits means full precision. 8-bit
weights may instead take ONNX Runtime's reduced range (``reduce_range``: levels -64..64, ``scale =
max|w| / 64``), the range its int8 files get on x86 CPUs without VNNI, so that a family trained at
8 bits rounds its weights as those files will.
The gradient passes straight through to the full-precision weight (the straight-through
estimator, Bengio et al. 2013), so the same call serves post-training and quantization-aware
training. An elastic layer quantizes its *active slice*, so a narrower sub-model gets its own scales.

Activations, optionally, are quantized per tensor, unsigned with a zero point, over the range
observed while ``observing`` is on (see ``calibrate_``).

>>> w = torch.tensor([[0.6, -1.0, 0.2]])
>>> fake_quantize_weight(w, 2)
tensor([[ 1., -1.,  0.]])
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator

import torch
from torch import fx, nn

BITS = (2, 3, 4, 8, 32)  # 32: full precision
FULL = 32


class CalibrationError(RuntimeError):
    """An activation is to be quantized but no range was ever observed for it."""


def check_bits(bits: int, where: str = "bits") -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{where}: bit-width must be one of {BITS}, got {bits!r}")
    return int(bits)


REDUCED_QMAX = 64  # ONNX Runtime's reduced range of int8 weights: levels -64..64 (129 of them)


def _qmax(bits: int, reduce_range: bool = False) -> int:
    """The largest level of symmetric ``bits``-bit weights (``bits`` already checked); at 8 bits with
    ``reduce_range``, ONNX Runtime's (its ``get_qmin_qmax_for_qType``: -64..64, not 7-bit -63..63)."""
    return REDUCED_QMAX if reduce_range and bits == 8 else 2 ** (bits - 1) - 1


def _scale(weight: torch.Tensor, qmax: int, axis: int) -> torch.Tensor:
    others = [d for d in range(weight.dim()) if d != axis % weight.dim()]
    amax = weight.detach().abs().amax(dim=others, keepdim=True)
    return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))  # an all-zero channel stays zero


def _quantize(weight: torch.Tensor, bits: int, axis: int, reduce_range: bool = False) -> torch.Tensor:
    """``quantize_values`` for a checked ``bits`` below 32."""
    qmax = _qmax(bits, reduce_range)
    scale = _scale(weight, qmax, axis)
    return torch.round(weight.detach() / scale).clamp(-qmax, qmax) * scale


def weight_scale(weight: torch.Tensor, bits: int, axis: int = 0, reduce_range: bool = False) -> torch.Tensor:
    """One scale per output channel (along ``axis``), broadcastable against ``weight``."""
    return _scale(weight, _qmax(check_bits(bits), reduce_range), axis)


def quantize_values(weight: torch.Tensor, bits: int, axis: int = 0, reduce_range: bool = False) -> torch.Tensor:
    """The quantized weight, with no gradient: what an extracted layer holds.

    >>> quantize_values(torch.tensor([[1.0, 0.5, 0.26]]), 8, reduce_range=True) * 64  # levels of 1/64
    tensor([[64., 32., 17.]])
    """
    if check_bits(bits) == FULL:
        return weight.detach()
    return _quantize(weight, bits, axis, reduce_range)


def fake_quantize_weight(weight: torch.Tensor, bits: int | None, axis: int = 0,
                         reduce_range: bool = False) -> torch.Tensor:
    """Forward: the quantized weight, exactly. Backward: the identity to ``weight`` (STE)."""
    if bits is None or check_bits(bits) == FULL:
        return weight
    # weight - weight.detach() is exactly 0 forward and carries the gradient 1 backward.
    return _quantize(weight, bits, axis, reduce_range) + (weight - weight.detach())


class ActivationQuantizer(nn.Module):
    """Per-tensor, unsigned (asymmetric) fake quantization of a layer's input.

    The range is the running min and max seen while ``observing`` is True, widened to hold 0 so
    that zero (padding, a ReLU's output) is exact; ``scale = (max - min) / (2^b - 1)`` and the
    zero point is ``round(-min / scale)``. The range is a buffer, so it is saved with the family.
    Whether a range was observed is also kept as a Python flag (set while observing and when a
    state dict is loaded), so a forward pass does not read the buffers back from the device.
    """

    def __init__(self, bits: int, layer: str = ""):
        super().__init__()
        if check_bits(bits, "activation_bits") == FULL:
            raise ValueError(f"activation_bits: {FULL} means no quantization; use None")
        self.bits, self.layer, self.observing, self._observed = bits, layer, False, False
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    @property
    def observed(self) -> bool:
        return self._observed

    def reset(self) -> None:
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self._observed = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._observed = bool(self.min_val <= self.max_val)  # once per load, not per forward

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) as the tensors ``torch.fake_quantize_per_tensor_affine`` takes."""
        if not self.observed:
            raise CalibrationError(
                f"calibration data missing for activation ranges (layer {self.layer!r}): run "
                "onefit.elastic.quant.calibrate_(family, batches) first, or your own forward passes "
                "inside `with onefit.elastic.quant.observing(family):`")
        levels = 2**self.bits - 1
        low, high = self.min_val.clamp(max=0).float(), self.max_val.clamp(min=0).float()
        scale = ((high - low) / levels).clamp_min(torch.finfo(torch.float32).eps)  # an all-zero input
        return scale, torch.round(-low / scale).clamp(0, levels).to(torch.int32)

    def forward(self, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                torch.minimum(self.min_val, x.min().to(self.min_val), out=self.min_val)
                torch.maximum(self.max_val, x.max().to(self.max_val), out=self.max_val)
            self._observed = True
        if not quantize:
            return x
        scale, zero_point = self.qparams()
        # torch's op: values outside the range are clamped and pass no gradient (clipped STE).
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 2**self.bits - 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, range=({self.min_val.item():.4g}, {self.max_val.item():.4g})"


def fake_quantize(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, axis: int = 0):
    """(input, weight) as ``layer`` computes with them at its ``active_bits`` (None or 32: as they are).

    Its input quantizer, if it has one, observes the input whenever observing is on, so that the
    full-precision model can be calibrated, and quantizes it only when the weights are quantized.
    The layer's ``reduce_range`` (set by ``ElasticConfig(reduce_range=True)``) picks the 8-bit range.
    """
    quantized = layer.active_bits is not None and layer.active_bits != FULL
    inputs = getattr(layer, "input_quant", None)  # a submodule, so not a class attribute
    if inputs is not None:
        x = inputs(x, quantize=quantized)
    if not quantized:
        return x, weight
    return x, fake_quantize_weight(weight, layer.active_bits, axis, getattr(layer, "reduce_range", False))


WRAPPED = "layer"  # the attribute under which _QuantizedInput holds its layer (ONNX scopes end in it)


class _QuantizedInput(nn.Module):
    """A plain layer behind fixed activation fake quantization; traced to plain torch, then thrown away."""

    def __init__(self, layer: nn.Module, scale: torch.Tensor, zero_point: torch.Tensor, bits: int):
        super().__init__()
        self.layer, self.quant_max = layer, 2**bits - 1
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("zero_point", zero_point.detach().clone())

    def forward(self, x):
        return self.layer(torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, self.quant_max))


def weight_layer(module: nn.Module) -> nn.Module:
    """The layer that holds ``module``'s weight: ``module`` itself, or, for a layer that an extracted
    sub-model runs behind its input quantization (``ElasticConfig(activation_bits=...)``), the plain
    layer inside that wrapper. The wrapper is traced, so it is known by its parts, not its class."""
    inner = getattr(module, WRAPPED, None)
    if isinstance(module, (_QuantizedInput, fx.GraphModule)) and isinstance(inner, nn.Module) \
            and hasattr(module, "zero_point") and not hasattr(module, "weight"):
        return inner
    return module


def without_input_quantization(module: nn.Module) -> tuple[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """A copy of ``module`` (an extracted sub-model of a family with ``activation_bits``) with each
    layer out of its input quantization, and each such layer's ``(scale, zero point)``: what an int8
    runtime needs to quantize those inputs itself, as the family trained them
    (``onefit.export.quantize.input_overrides``)."""
    plain = copy.deepcopy(module)
    ranges = {}
    for name, child in list(plain.named_modules()):
        inner = weight_layer(child)
        if inner is not child:
            ranges[name] = (child.scale.detach().clone(), child.zero_point.detach().clone())
            if name:
                parent, _, attr = name.rpartition(".")
                setattr(plain.get_submodule(parent), attr, inner)
            else:
                plain = inner
    return plain, ranges


def quantize_plain(plain: nn.Module, elastic: nn.Module, bits: int) -> nn.Module:
    """Bake ``bits`` into ``plain`` (the extracted slice of ``elastic``): fp32 weights holding the
    quantized values, and the input quantization as plain torch ops when ``elastic`` has one."""
    if check_bits(bits) == FULL:
        return plain
    with torch.no_grad():
        plain.weight.copy_(quantize_values(plain.weight, bits, getattr(elastic, "out_axis", 0),
                                           getattr(elastic, "reduce_range", False)))
    inputs = getattr(elastic, "input_quant", None)
    if inputs is None:
        return plain
    return fx.symbolic_trace(_QuantizedInput(plain, *inputs.qparams(), inputs.bits)).train(elastic.training)


@contextlib.contextmanager
def observing(module: nn.Module) -> Iterator[list[ActivationQuantizer]]:
    """Record activation ranges during the forward passes inside the block; the flags are restored after."""
    quantizers = [m for m in module.modules() if isinstance(m, ActivationQuantizer)]
    if not quantizers:
        raise ValueError("nothing to observe: no activation quantizers; use ElasticConfig(bits=..., activation_bits=8)")
    saved = [q.observing for q in quantizers]
    try:
        for q in quantizers:
            q.observing = True
        yield quantizers
    finally:
        for q, flag in zip(quantizers, saved):
            q.observing = flag


def calibrate_(family, batches: Iterable, arch: dict | None = None):
    """Observe activation ranges on ``batches`` (tensors or ``(x, y)`` pairs) in eval mode, running
    ``arch`` (the largest, full-precision sub-model by default). Returns ``family``, calibrated in place."""
    modes = {m: m.training for m in family.modules()}
    family.eval()
    try:
        with torch.no_grad(), observing(family), family.activate(arch or family.space.max()):
            for batch in batches:
                family(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return family
