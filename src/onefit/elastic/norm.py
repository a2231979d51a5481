"""Elastic BatchNorm1d/2d, LayerNorm and RMSNorm (over the last dimension): they normalise the
channels that arrive, with the matching prefix of their affine weights and running statistics.
A transformer's RMSNorm (Llama's and its kin, registered by name) runs its own forward with
the prefix of its weight, so a narrower residual stream is normalised over its active channels.

>>> norm = ElasticBatchNorm.from_plain(nn.BatchNorm2d(8)).eval()
>>> tuple(norm(torch.randn(2, 3, 4, 4)).shape), norm.to_plain(3, 3).num_features
((2, 3, 4, 4), 3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch.func import functional_call

from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register


class _NormCost(ElasticLayer):
    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        weight, bias = getattr(self, "weight", None) is not None, getattr(self, "bias", None) is not None
        return weight * n_out + bias * n_out, 0


@register(nn.BatchNorm1d, nn.BatchNorm2d)
class ElasticBatchNorm(_NormCost, nn.modules.batchnorm._BatchNorm):
    coupling = "batch_norm"

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.num_features, plain.num_features

    in_index = None  # channels to use when the input is a concatenation; None: a prefix
    @classmethod
    def from_plain(cls, plain: nn.modules.batchnorm._BatchNorm) -> "ElasticBatchNorm":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(layer, attr, getattr(plain, attr))
        layer.weight, layer.bias = plain.weight, plain.bias
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            layer.register_buffer(buf, getattr(plain, buf))
        layer.plain_type = type(plain)
        return layer

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"ElasticBatchNorm expects 2-D to 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        c = x.shape[1]
        # Same momentum bookkeeping as torch's _BatchNorm.forward, on a prefix of the statistics.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        keep_running = not self.training or self.track_running_stats
        index = slice(0, c) if self.in_index is None else self.in_index

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        # A prefix slice is a view, so batch_norm updates the running statistics in place; an index
        # gathers a copy, whose updates are written back below.
        mean, var = (pick(self.running_mean), pick(self.running_var)) if keep_running else (None, None)
        out = F.batch_norm(x, mean, var, pick(self.weight), pick(self.bias), use_batch_stats, factor, self.eps)
        if self.in_index is not None and self.training and mean is not None:
            with torch.no_grad():
                self.running_mean[index] = mean
                self.running_var[index] = var
        return out

    def to_plain(self, in_size: int, out_size: int, in_index: torch.Tensor | None = None) -> nn.Module:
        plain = self.plain_type(
            out_size, eps=self.eps, momentum=self.momentum, affine=self.affine,
            track_running_stats=self.track_running_stats,
        )
        with torch.no_grad():
            index = slice(0, out_size) if in_index is None else in_index
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(self, name) is not None:
                    getattr(plain, name).copy_(getattr(self, name)[index])
            if self.num_batches_tracked is not None:
                plain.num_batches_tracked.copy_(self.num_batches_tracked)
        device = self.weight.device if self.weight is not None else None
        return plain.to(device)


@register(nn.LayerNorm)
class ElasticLayerNorm(_NormCost, nn.LayerNorm):
    coupling = "layer_norm"

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.normalized_shape[-1], plain.normalized_shape[-1]

    @classmethod
    def from_plain(cls, plain: nn.LayerNorm) -> "ElasticLayerNorm":
        if len(plain.normalized_shape) != 1:
            raise TypeError(f"elastic LayerNorm needs one normalized dimension, got {plain.normalized_shape}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.normalized_shape, layer.eps = plain.normalized_shape, plain.eps
        layer.elementwise_affine = plain.elementwise_affine
        layer.weight, layer.bias = plain.weight, plain.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        weight = None if self.weight is None else self.weight[:c]
        bias = None if self.bias is None else self.bias[:c]
        return F.layer_norm(x, (c,), weight, bias, self.eps)

    def to_plain(self, in_size: int, out_size: int) -> nn.LayerNorm:
        plain = nn.LayerNorm(out_size, eps=self.eps, elementwise_affine=self.elementwise_affine,
                             bias=self.bias is not None)
        with torch.no_grad():
            if self.weight is not None:
                plain.weight.copy_(self.weight[:out_size])
            if self.bias is not None:
                plain.bias.copy_(self.bias[:out_size])
        return plain


@register(nn.RMSNorm)
class ElasticRMSNorm(_NormCost, nn.RMSNorm):
    coupling = "layer_norm"

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.normalized_shape[-1], plain.normalized_shape[-1]

    @classmethod
    def from_plain(cls, plain: nn.RMSNorm) -> "ElasticRMSNorm":
        if len(plain.normalized_shape) != 1:
            raise TypeError(f"elastic RMSNorm needs one normalized dimension, got {plain.normalized_shape}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.normalized_shape, layer.eps, layer.elementwise_affine = plain.normalized_shape, plain.eps, \
            plain.elementwise_affine
        layer.weight = plain.weight
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        return F.rms_norm(x, (c,), None if self.weight is None else self.weight[:c], self.eps)

    def to_plain(self, in_size: int, out_size: int) -> nn.RMSNorm:
        plain = nn.RMSNorm(out_size, eps=self.eps, elementwise_affine=self.elementwise_affine)
        if self.weight is not None:
            with torch.no_grad():
                plain.weight.copy_(self.weight[:out_size])
        return plain.to(None if self.weight is None else self.weight.device)


# transformers' RMSNorms whose weight scales the normalised channels one for one (not Gemma's 1 + w)
TRANSFORMERS_RMSNORMS = [f"transformers.models.{m}.modeling_{m}.{c}RMSNorm" for m, c in
                         (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"),
                          ("phi3", "Phi3"))]


@register(*TRANSFORMERS_RMSNORMS)
class ElasticTransformersRMSNorm(_NormCost, nn.Module):
    """A norm over the last axis with one weight per channel, running the plain class's own
    forward: at full width as it is, narrower with the prefix of its weight (``functional_call``)."""

    coupling = None  # read off a transformer's modules, never traced

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.weight.shape[0], plain.weight.shape[0]

    @classmethod
    def from_plain(cls, plain: nn.Module) -> "ElasticTransformersRMSNorm":
        layer = cls()
        layer.__dict__.update(_attributes(plain))
        layer.weight = plain.weight
        layer.plain_type = type(plain)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.weight.shape[0]:
            return self.plain_type.forward(self, x)
        return functional_call(self, {"weight": self.weight[: x.shape[-1]]}, (x,))

    def to_plain(self, in_size: int, out_size: int) -> nn.Module:
        plain = self.plain_type.__new__(self.plain_type)
        nn.Module.__init__(plain)
        plain.__dict__.update({k: v for k, v in _attributes(self).items() if k != "plain_type"})
        plain.weight = nn.Parameter(self.weight[:out_size].detach().clone())
        return plain


def _attributes(module: nn.Module) -> dict:
    """A module's own plain attributes (an epsilon), not its parameters, buffers or submodules."""
    return {k: v for k, v in module.__dict__.items() if not k.startswith("_") and k != "training"}
