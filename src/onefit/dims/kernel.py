"""Kernel size (Once-for-All, Cai et al. 2020, section 3.2): a convolution with a K x K kernel
offers smaller odd kernels (7 -> 5 -> 3). A smaller kernel is the centre of the next larger one
passed through a learned linear map, one per layer and size and shared across channels, started
as the identity: the 5 x 5 centre of the 7 x 7 kernel through a 25 x 25 map, then the 3 x 3
centre of that through a 9 x 9 map (chained). The padding shrinks with the kernel so the output
size is unchanged; the largest kernel is the layer itself, exactly. For standard and depthwise
convolutions, 1-D and 2-D. Extraction gives a plain convolution holding the transformed kernel.

>>> import torch, onefit
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 7, padding=3), torch.nn.ReLU(), torch.nn.Flatten(),
...                           torch.nn.Linear(8 * 64, 10))
>>> family = onefit.elasticize(net, (torch.randn(1, 1, 8, 8),), onefit.ElasticConfig(width=(1.0,), kernel=(3, 5)))
>>> family.space["kernel:0"].choices
(3, 5, 7)
>>> conv = family.extract({"kernel:0": 3})[0]
>>> conv.kernel_size, conv.padding
((3, 3), (1, 1))
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onefit.dims.base import Kind, register_kind
from onefit.elastic.conv import ElasticConv
from onefit.space import Dimension


class KernelTransform(nn.Module):
    """The learned maps from each kernel size to the next smaller one, and the active size."""

    def __init__(self, full: int, choices: tuple[int, ...], dims: int, dilation: tuple[int, ...]):
        super().__init__()
        self.full, self.choices, self.dims, self.dilation = full, tuple(choices), dims, tuple(dilation)
        self.active: int | None = None  # None: the full kernel
        # maps["5"]: from the 7 x 7 centre's 25 values to the 5 x 5 kernel's, started as the identity
        self.maps = nn.ParameterDict({str(k): nn.Parameter(torch.eye(k ** dims)) for k in choices if k < full})

    def kernel(self, weight: torch.Tensor, size: int) -> torch.Tensor:
        """``weight`` (out, in, K, ...) as a ``size`` kernel: centres and maps, chained down from K."""
        for k in sorted((c for c in self.choices if size <= c < self.full), reverse=True):
            cut = (weight.shape[-1] - k) // 2
            centre = weight[(..., *[slice(cut, cut + k)] * self.dims)]  # (out, in, k, ...)
            flat = centre.reshape(*centre.shape[:2], k ** self.dims)
            weight = (flat @ self.maps[str(k)].T).reshape(centre.shape)
        return weight

    def padding(self, padding: tuple[int, ...], size: int) -> tuple[int, ...]:
        return tuple(p - d * (self.full - size) // 2 for p, d in zip(padding, self.dilation))

    def forward(self, weight: torch.Tensor, options: dict) -> tuple[torch.Tensor, dict]:
        if self.active is None or self.active == self.full:
            return weight, options
        return self.kernel(weight, self.active), {**options, "padding": self.padding(options["padding"], self.active)}


def _why_fixed(layer: ElasticConv, smaller: tuple[int, ...]) -> str | None:
    shape = tuple(layer.weight.shape[2:])
    if len(set(shape)) != 1 or shape[0] % 2 == 0:
        return f"kernel {shape} is not square and odd"
    padding, dilation = layer.options["padding"], layer.options["dilation"]
    if any(p < d * (shape[0] - min(smaller)) // 2 for p, d in zip(padding, dilation)):
        return f"padding {padding} too small to keep the output size with a {min(smaller)} kernel"
    return None


@register_kind
class KernelKind(Kind):
    names = ("kernel",)

    def setup_(self, family) -> None:
        """Give every convolution with a kernel larger than a choice its transform (``kernel_layers``
        can exclude layers by pattern). A choice larger than every layer's kernel is an error."""
        self.layers: dict[str, tuple[int, ...]] = {}
        self.notes: dict[str, str] = {}
        choices = family.config.kernel
        if choices is None:
            return
        convs = {name: family.module.get_submodule(name) for name, layer in family.plan.layers.items()
                 if layer.kind in ("conv", "conv_pass") and isinstance(family.module.get_submodule(name), ElasticConv)}
        largest = max((m.weight.shape[-1] for m in convs.values()), default=0)
        if not convs or min(choices) >= largest:
            raise ValueError(f"ElasticConfig.kernel: choices {list(choices)} offer no smaller kernel to any "
                             f"convolution; their kernels are at most {largest}")
        for name, layer in convs.items():
            full = layer.weight.shape[-1]
            smaller = tuple(k for k in choices if k < full)
            if not smaller or full == 1 or not family.config.kernel_allowed(name):
                continue
            reason = _why_fixed(layer, smaller)
            if reason is not None:
                self.notes[name] = reason
                continue
            layer.kernel_transform = KernelTransform(full, (*smaller, full), layer.weight.dim() - 2,
                                                     layer.options["dilation"]).to(layer.weight.device)
            self.layers[name] = (*smaller, full)

    def dimensions(self, family) -> list[Dimension]:
        return [Dimension(f"kernel:{name}", "kernel", choices) for name, choices in self.layers.items()]

    def values(self, family, arch) -> dict[str, int]:
        return {name: arch[f"kernel:{name}"] for name in self.layers if f"kernel:{name}" in arch}

    def settings(self, family, arch):
        return [(family.module.get_submodule(name).kernel_transform, "active", k)
                for name, k in self.values(family, arch).items()]

    def idle(self, family, arch, gone):
        return {f"kernel:{n}" for n in self.layers if gone(n)}

    def extract_layer(self, family, name, plain, arch):
        size = self.values(family, arch).get(name)
        if size is None or size == plain.weight.shape[-1]:
            return plain
        transform = family.module.get_submodule(name).kernel_transform
        smaller = type(plain)(plain.in_channels, plain.out_channels, size, stride=plain.stride,
                              padding=transform.padding(plain.padding, size), dilation=plain.dilation,
                              groups=plain.groups, bias=plain.bias is not None)
        with torch.no_grad():
            smaller.weight.copy_(transform.kernel(plain.weight, size))
            if plain.bias is not None:
                smaller.bias.copy_(plain.bias)
        return smaller.to(plain.weight.device, plain.weight.dtype)

    def cost_(self, family, arch, rows) -> None:
        for name, size in self.values(family, arch).items():
            if name in rows:
                row, layer = rows[name], family.module.get_submodule(name)
                share = (size / layer.weight.shape[-1]) ** (layer.weight.dim() - 2)
                bias = row["n_out"] if layer.bias is not None else 0
                weights = row["params"] - bias
                row["macs"] = round(row["macs"] * share)
                row["params"] = round(weights * share) + bias
                row["bytes"] = 4 * row["params"]

    def columns(self, family, name):
        dim = f"kernel:{name}"
        if dim in family.space.names:
            return {"kernel": (f"{dim} {family.space[dim].choices}", True)}
        return {"kernel": (self.notes[name], False)} if name in self.notes else {}
