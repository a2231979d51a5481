"""Shared models for the contract tests: the zoo plus small models that exercise each coupling rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onefit.zoo import (
    convnext, mlp, mobilenet_v2, mobilenet_v3, plain_cnn, resnet, sequence_encoder, temporal_cnn, vit,
)


class DepthwiseNet(nn.Module):
    """Inverted-residual style: pointwise expand, depthwise 3x3, grouped 3x3, pointwise project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 32, 1)
        self.bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.project = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.project(torch.relu(self.grouped(self.dw(torch.relu(self.bn(self.expand(x)))))))
        return self.fc((x + y).mean((2, 3)))


class FlattenNet(nn.Module):
    """Conv features flattened (with view) into a Linear, and a LayerNorm'd MLP head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(12 * 4 * 4, 32)
        self.norm = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class TemporalNet(nn.Module):
    """A 1-D temporal CNN with BatchNorm1d and a residual stage."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv1d(4, 16, 5, padding=2)
        self.stage = nn.Sequential(*[nn.Sequential(nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU())
                                     for _ in range(3)])
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        return self.out(self.stage(torch.relu(self.inp(x))).amax(-1))


MODELS = {
    "mlp": (lambda: mlp(in_features=64, hidden=32, layers=3), (6, 1, 8, 8)),
    "plain_cnn": (lambda: plain_cnn(widths=(8, 16), blocks=3), (4, 1, 8, 8)),
    "resnet": (lambda: resnet(widths=(8, 16), blocks=(2, 3)), (4, 1, 8, 8)),
    "resnet_bottleneck": (lambda: resnet(widths=(4, 8), blocks=(2, 2), bottleneck=True), (4, 1, 8, 8)),
    "mobilenet_v2": (mobilenet_v2, (4, 1, 8, 8)),
    "mobilenet_v3": (mobilenet_v3, (4, 1, 8, 8)),
    "convnext": (convnext, (4, 1, 8, 8)),
    "temporal_cnn": (temporal_cnn, (4, 4, 24)),
    "vit": (vit, (4, 1, 8, 8)),
    "sequence_encoder": (sequence_encoder, (3, 6, 8)),
    "depthwise": (DepthwiseNet, (4, 3, 8, 8)),
    "flatten": (FlattenNet, (4, 1, 8, 8)),
    "temporal": (TemporalNet, (4, 4, 20)),
}


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give batch norms non-trivial statistics so that a wrong slice shows in the outputs."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class DenseNet(nn.Module):
    """DenseNet-style (Huang et al. 2017): each layer reads the concatenation of all before it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 6, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(14), nn.Conv2d(14, 6, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(20)
        self.fc = nn.Linear(20, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.conv1(torch.relu(self.bn1(x)))], 1)
        x = torch.cat([x, self.conv2(torch.relu(self.bn2(x)))], 1)
        return self.fc(torch.relu(self.bn3(x)).mean((2, 3)))


MODELS["densenet"] = (DenseNet, (4, 1, 8, 8))


class MHAEncoder(nn.Module):
    """A transformer encoder built on torch's nn.MultiheadAttention."""

    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: (B, T, 6), or (T, B, 6) when not batch_first
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.mlp(self.norm(h))
        return self.head(h.mean(1 if self.batch_first else 0))


MODELS["mha"] = (MHAEncoder, (3, 5, 6))


@pytest.fixture(params=sorted(MODELS))
def zoo_case(request):
    build, shape = MODELS[request.param]
    torch.manual_seed(0)
    return request.param, randomize_norms(build()), torch.randn(*shape)


def said(output: str, message: str) -> bool:
    """Whether a command's output holds ``message``, once rich's error panel (its borders and line
    wrapping) is taken away."""
    flat = "".join(output.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", " ").split())
    return "".join(message.split()) in flat  # rich wraps lines anywhere, even inside a JSON example
