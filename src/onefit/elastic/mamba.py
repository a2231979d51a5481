"""Elastic ``MambaMixer`` (transformers' Mamba): the first ``active_out`` channels of its inner
width, as Minitron-SSM prunes a state-space block.

Each inner channel is its own selective scan; it owns a row of the input projection in each of
its two halves (x and the gate z), a depthwise causal-convolution filter, a column of x_proj
(which makes the step size and B, C from every channel), a row of dt_proj, of A_log and of D,
and a column of the output projection. The mixer's forward reads several of these weights
directly (not through their modules), so it runs transformers' own forward on the prefixes of
all of them (``functional_call``); at full width it runs as it is. The hidden size, the state
size and the step-size rank stay whole.

>>> import transformers
>>> config = transformers.MambaConfig(vocab_size=10, hidden_size=8, state_size=4, expand=2, num_hidden_layers=1)
>>> mixer = ElasticMambaMixer.from_plain(transformers.MambaForCausalLM(config).backbone.layers[0].mixer)
>>> mixer.active_out = 4  # of 16 inner channels
>>> tuple(mixer(torch.randn(1, 3, 8)).shape), mixer.to_plain(8, 4).intermediate_size
((1, 3, 8), 4)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register

_PARTS = ("conv1d", "act", "in_proj", "x_proj", "dt_proj", "out_proj")


@register("transformers.models.mamba.modeling_mamba.MambaMixer")
class ElasticMambaMixer(ElasticLayer, nn.Module):
    coupling = None  # read off the model's modules, never traced

    active_out: int | None = None  # inner channels; None: all

    @classmethod
    def plain_sizes(cls, plain: nn.Module) -> tuple[int, int]:
        return plain.hidden_size, plain.intermediate_size  # the stream in, the inner width "out"

    @classmethod
    def from_plain(cls, plain: nn.Module) -> "ElasticMambaMixer":
        layer = cls()
        layer.__dict__.update({k: v for k, v in plain.__dict__.items() if not k.startswith("_") and k != "training"})
        for name in _PARTS:
            setattr(layer, name, getattr(plain, name))
        layer.A_log, layer.D = plain.A_log, plain.D
        layer.plain_type = type(plain)
        return layer

    def rows(self, width: int) -> torch.Tensor:
        """in_proj's rows for ``width`` inner channels: the first of each half (x, then the gate)."""
        return torch.cat([torch.arange(width), self.intermediate_size + torch.arange(width)])

    def sliced(self, width: int) -> dict[str, torch.Tensor]:
        """Every weight of the mixer at ``width`` inner channels, by its state-dict name."""
        rows, inner = self.rows(width), slice(0, width)
        tensors = {"in_proj.weight": self.in_proj.weight[rows], "conv1d.weight": self.conv1d.weight[inner],
                   "x_proj.weight": self.x_proj.weight[:, inner], "dt_proj.weight": self.dt_proj.weight[inner],
                   "dt_proj.bias": self.dt_proj.bias[inner], "A_log": self.A_log[inner], "D": self.D[inner],
                   "out_proj.weight": self.out_proj.weight[:, inner]}
        if self.in_proj.bias is not None:
            tensors["in_proj.bias"] = self.in_proj.bias[rows]
        if self.conv1d.bias is not None:
            tensors["conv1d.bias"] = self.conv1d.bias[inner]
        return tensors

    def forward(self, hidden_states, *args, **kwargs):
        width = self.active_out
        if width is None or width == self.D.shape[0]:  # full width, or already running on the prefixes
            return self.plain_type.forward(self, hidden_states, *args, **kwargs)
        return functional_call(self, self.sliced(width), (hidden_states, *args), kwargs)

    def cost(self, kind: str, n_in: int, n_out: int, positions) -> tuple[int, int]:
        """Parameters and multiply-adds per sample at ``n_out`` inner channels (the scan itself,
        about 3 x state size multiply-adds per channel and token, is left out, as for attention
        products in transformers)."""
        hidden, state, rank, kernel = n_in, self.ssm_state_size, self.time_step_rank, self.conv_kernel_size
        weights = {"in_proj": hidden * 2 * n_out, "conv1d": n_out * kernel, "x_proj": n_out * (rank + 2 * state),
                   "dt_proj": rank * n_out, "out_proj": n_out * hidden}
        biases = (2 * n_out * (self.in_proj.bias is not None) + n_out * (self.conv1d.bias is not None) + n_out
                  + hidden * (self.out_proj.bias is not None))
        params = sum(weights.values()) + biases + n_out * state + n_out  # + A_log, D
        return params, sum(weights.values()) * positions

    def to_plain(self, in_size: int, out_size: int) -> nn.Module:
        plain = self.plain_type.__new__(self.plain_type)
        nn.Module.__init__(plain)
        plain.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_")
                               and k not in ("training", "plain_type", "active_out")})
        plain.intermediate_size = out_size
        tensors = {k: v.detach().clone() for k, v in self.sliced(out_size).items()}
        conv = self.conv1d
        plain.conv1d = nn.Conv1d(out_size, out_size, conv.kernel_size, groups=out_size, padding=conv.padding,
                                 bias=conv.bias is not None)
        plain.act = self.act
        plain.in_proj = nn.Linear(in_size, 2 * out_size, bias=self.in_proj.bias is not None)
        plain.x_proj = nn.Linear(out_size, self.x_proj.out_features, bias=False)
        plain.dt_proj = nn.Linear(self.dt_proj.in_features, out_size, bias=True)
        plain.out_proj = nn.Linear(out_size, self.out_proj.out_features, bias=self.out_proj.bias is not None)
        plain.A_log, plain.D = (nn.Parameter(torch.empty_like(tensors[name])) for name in ("A_log", "D"))
        if self.out_proj.bias is not None:
            tensors["out_proj.bias"] = self.out_proj.bias.detach().clone()
        plain.load_state_dict(tensors, strict=True)
        return plain.to(self.D.device)

    # Importance sorting: an inner channel is its row in both halves of in_proj plus what it owns.
    def channel_scores(self) -> torch.Tensor:
        w = self.in_proj.weight.detach().abs().sum(1).view(2, -1).sum(0)  # (inner,)
        return w + self.out_proj.weight.detach().abs().sum(0)

    def permute_out(self, order: torch.Tensor) -> None:
        rows = torch.cat([order, self.intermediate_size + order])
        for tensor, index in ((self.in_proj.weight, rows), (self.in_proj.bias, rows), (self.conv1d.weight, order),
                              (self.conv1d.bias, order), (self.dt_proj.weight, order), (self.dt_proj.bias, order),
                              (self.A_log, order), (self.D, order)):
            if tensor is not None:
                tensor.copy_(tensor[index])
        for tensor in (self.x_proj.weight, self.out_proj.weight):
            tensor.copy_(tensor[:, order])
