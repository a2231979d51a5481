"""inspect(): coverage is pinned per model, so a regression in the analysis fails here."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import onefit
from onefit.cli import app
from conftest import MODELS, said
from test_family import WithLSTM

# model: (share of parameters in elastic layers, share the smallest sub-model drops, space size)
PINNED = {
    "convnext": (1.0, 0.9444, 16384),
    "densenet": (1.0, 0.8729, 64),  # layers reading a concatenation of elastic groups count as elastic
    "depthwise": (1.0, 0.7935, 16),
    "flatten": (1.0, 0.9298, 64),
    "mlp": (1.0, 0.8299, 64),
    "mha": (0.8017, 0.6777, 16),
    "mobilenet_v2": (1.0, 0.961, 301989888),
    "mobilenet_v3": (1.0, 0.9651, 824633720832),
    "plain_cnn": (1.0, 0.9792, 144),
    "resnet": (1.0, 0.9744, 98304),
    "resnet_bottleneck": (1.0, 0.9301, 16777216),
    "sequence_encoder": (0.9826, 0.8952, 12288),
    "temporal": (1.0, 0.9454, 48),
    "temporal_cnn": (1.0, 0.9685, 16),
    "vit": (0.9601, 0.8747, 12288),  # the embedding width is fixed by the position table it adds
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_coverage_is_pinned(name):
    build, shape = MODELS[name]
    report = onefit.inspect(build(), (torch.randn(*shape),))
    coverage, reducible, size = PINNED[name]
    assert (round(report.coverage, 4), round(report.reducible, 4), report.space_size) == (coverage, reducible, size)
    assert report.params_max == sum(p.numel() for p in build().parameters())


def test_layers_kept_whole_are_listed_with_their_reason():
    report = onefit.inspect(WithLSTM(), (torch.randn(2, 5, 6),))
    rnn = next(layer for layer in report.layers if layer.name == "rnn")
    assert not rnn.elastic and "no elastic version of GRU" in rnn.width_in
    fc = next(layer for layer in report.layers if layer.name == "fc")
    assert fc.width_out.startswith("fixed: used by layer GRU")
    assert 0 < report.coverage < 1
    assert "| rnn | GRU |" in report.to_markdown()


def test_cli_inspect_takes_a_module_function_path():
    runner = CliRunner()
    out = runner.invoke(app, ["inspect", "onefit.zoo:resnet", "--kwargs", '{"widths": [8, 16], "blocks": [2, 3]}',
                              "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["space_size"] == PINNED["resnet"][2]
    bad = runner.invoke(app, ["inspect", "onefit.zoo:resnet", "--input-shape", "1,3,8,8"])
    assert bad.exit_code == 1 and "expected input[1, 3, 8, 8] to have 1 channels" in bad.output
    missing = runner.invoke(app, ["inspect", "onefit.zoo:nothing"])
    assert missing.exit_code == 2 and said(missing.output, "cannot import the model factory 'onefit.zoo:nothing'")


def test_a_layer_after_an_unknown_op_says_that_op_fixes_its_input():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            y = torch.relu(torch.cumsum(self.first(x), dim=-1))  # cumsum: an op onefit does not know
            return self.head(torch.relu(self.second(y)))

    rows = {row.name: row for row in onefit.inspect(Cumulative(), (torch.randn(2, 6),)).layers}
    assert rows["first"].width_in == "fixed (model input)"
    assert "cumsum" in rows["second"].width_in and "model input" not in rows["second"].width_in
    assert rows["second"].width_out.startswith("width:")  # the layer itself still shrinks its output
