"""Continual inference: forward_step over a stream equals the offline model on every sliding window."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

import onefit
from onefit.streaming import NotStreamable, continual


def windows_match(model: nn.Module, window: int, stream_len: int, frame_shape: tuple, time_dim: int = 2,
                  batch: int = 2) -> float:
    """Largest difference between each step's output and the offline model on the window ending there."""
    torch.manual_seed(1)
    clip_shape = list((batch, *frame_shape))
    clip_shape.insert(time_dim, window)
    stream = continual(model, torch.randn(clip_shape), time_dim=time_dim)
    x = torch.randn(clip_shape[:time_dim] + [stream_len] + clip_shape[time_dim + 1:])
    worst, outputs = 0.0, 0
    with torch.no_grad():
        for t, frame in enumerate(x.unbind(time_dim)):
            y = stream.forward_step(frame)
            if t < window - 1:
                assert y is None, f"an output at frame {t}, before a window of {window} frames arrived"
                continue
            ref = model(x.narrow(time_dim, t - window + 1, window))
            worst = max(worst, (y - ref).abs().max().item())
            outputs += 1
    assert outputs == stream_len - window + 1
    return worst


def trained_like(model: nn.Module) -> nn.Module:
    """Batch-norm statistics away from their defaults, so a misplaced frame shows."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("stride", [1, 2])
def test_temporal_cnn_sub_models_stream_exactly(stride):
    model = onefit.zoo.temporal_cnn(in_channels=6, channels=16, blocks=2, classes=4, stride=stride, padding=False)
    window = 24
    family = onefit.elasticize(trained_like(model), (torch.randn(2, 6, window),))
    archs = [family.space.max(), family.space.min()] + [family.space.sample(random.Random(s))
                                                                 for s in range(2)]
    for arch in archs:
        sub = family.extract(arch).eval()
        assert windows_match(sub, window, 40, (6,)) < 1e-5, arch


def test_three_d_cnn_with_strided_pooling_streams_exactly():
    model = trained_like(nn.Sequential(
        nn.Conv3d(2, 8, (3, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(8), nn.ReLU(),
        nn.MaxPool3d((2, 2, 2), stride=(2, 2, 2)),
        nn.Conv3d(8, 8, (3, 1, 1), dilation=(2, 1, 1)), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3)))
    assert windows_match(model, 13, 22, (2, 6, 6)) < 1e-5


def test_a_one_block_encoder_streams_through_single_output_attention():
    torch.manual_seed(0)
    model = onefit.zoo.sequence_encoder(features=5, dim=16, depth=2, heads=4, classes=3, readout="last").eval()
    family = onefit.elasticize(model, (torch.randn(2, 10, 5),),
                               onefit.ElasticConfig(width=(0.5, 1.0), depth=True))
    smallest = family.extract(family.space.min()).eval()
    assert len(smallest.blocks) == 1, "the family's smallest sub-model has one block"
    assert windows_match(smallest, 10, 18, (5,), time_dim=1) < 1e-5
    with pytest.raises(NotStreamable, match="every position of its output is used later"):
        continual(family.extract(family.space.max()), torch.randn(1, 10, 5))


def test_what_cannot_stream_is_named():
    padded = onefit.zoo.temporal_cnn(in_channels=3, channels=8, blocks=1)  # padding in time, the zoo's default
    with pytest.raises(NotStreamable, match=r"stem: padding 2 in time"):
        continual(padded, torch.randn(1, 3, 16))
    mean_readout = onefit.zoo.sequence_encoder(features=4, dim=8, depth=1, heads=2)
    with pytest.raises(NotStreamable, match=r"every position of its output is used later.*mean"):
        continual(mean_readout, torch.randn(1, 6, 4))
    short = onefit.zoo.temporal_cnn(in_channels=3, channels=8, blocks=3, stride=1, padding=False)
    with pytest.raises(ValueError, match=r"fails on the example clip of shape \(1, 3, 8\)"):
        continual(short, torch.randn(1, 3, 8))
    family = onefit.elasticize(onefit.zoo.temporal_cnn(in_channels=3, channels=8, blocks=1, stride=1, padding=False),
                               (torch.randn(1, 3, 16),))
    with pytest.raises(TypeError, match="extract a sub-model first"):
        continual(family, torch.randn(1, 3, 16))
    stream = continual(family.extract(family.space.max()), torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match=r"one frame of shape \(batch, 3\)"):
        stream.forward_step(torch.randn(1, 4))


def test_a_step_costs_one_position_per_layer():
    conv = nn.Sequential(nn.Conv1d(4, 8, 3, dilation=2), nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                         nn.Linear(8, 2))
    stream = continual(conv, torch.randn(1, 4, 20))
    assert stream.window_macs() == 4 * 8 * 3 * 16 + 8 * 2
    assert stream.step_macs() == 4 * 8 * 3 + 8 * 2  # one new output position, then the head
    assert (stream.receptive_field, stream.delay) == (20, 0)
    x = torch.randn(1, 4, 25)
    steps = stream.forward_steps(x)
    assert steps.shape == (1, 2, 6)
    assert torch.allclose(steps[..., -1], conv(x[..., -20:]), atol=1e-5)


def test_the_same_as_the_continual_inference_library():
    """Hedegaard's own library as the reference: its Conv1d (no dilation there) and its
    single-output attention give what onefit's steps give."""
    import continual as co

    torch.manual_seed(2)
    conv = nn.Conv1d(3, 5, 4)
    theirs = co.Conv1d(3, 5, 4)
    theirs.load_state_dict(conv.state_dict())
    ours = continual(nn.Sequential(conv), torch.randn(1, 3, 4))
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    single = co.SingleOutputMultiheadAttention(8, 2, batch_first=True, sequence_len=6).eval()
    single.load_state_dict(mha.state_dict())

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0][:, -1]

    ours_attention = continual(SelfAttention(), torch.randn(1, 6, 8))
    x, tokens = torch.randn(2, 3, 12), torch.randn(2, 12, 8)
    with torch.no_grad():
        for t in range(12):
            mine, reference = ours.forward_step(x[:, :, t]), theirs.forward_step(x[:, :, t])
            assert (mine is None) == (t < 3)
            if mine is not None:
                assert torch.allclose(mine.squeeze(-1), reference, atol=1e-6)
            mine, reference = ours_attention.forward_step(tokens[:, t]), single.forward_step(tokens[:, t])
            assert (mine is None) == (t < 5)
            if mine is not None:
                assert torch.allclose(mine, reference.reshape(mine.shape), atol=1e-6)


def test_a_run_with_a_streaming_target_reports_the_cost_of_a_step(tmp_path):
    from onefit.run import parse_config, run

    config = parse_config({
        "model": {"zoo": "temporal_cnn", "kwargs": {"in_channels": 8, "channels": 8, "blocks": 1, "classes": 10,
                                                    "stride": 1, "padding": False}},
        "data": {"bundled": "digit_rows", "kwargs": {"batch_size": 64}},
        "pretrain": {"epochs": 1}, "train": {"epochs": 1}, "elastic": {"width": [0.5, 1.0]},
        "search": {"budget": 4, "objectives": ["error", "step_macs"]},
        "targets": {"runtimes": ["streaming"], "batch_sizes": [1], "repeats": 5},
        "export": {"max_models": 1, "budgets": []}})
    out = tmp_path / "run"
    run(config, out, progress=False, echo=lambda _: None)
    model = json.loads((out / "models" / "manifest.json").read_text())["models"][0]
    assert model["streaming"]["window"] == 8 and model["streaming"]["macs_ratio"] > 1
    assert [l["runtime"] for l in model["latency"]] == ["streaming"]
    padded = parse_config({**config.model_dump(exclude_none=True),
                           "model": {"zoo": "temporal_cnn", "kwargs": {"in_channels": 8, "channels": 8, "blocks": 1,
                                                                        "classes": 10}}})
    with pytest.raises(Exception, match="'streaming'.*stem: padding 2 in time"):
        run(padded, tmp_path / "padded", progress=False, echo=lambda _: None)


def test_a_step_exports_to_onnx_and_carries_the_stream_on(tmp_path):
    """step_module() is the step as a pure function of the frame and the state: a verified ONNX
    file that, fed its own state back, goes on giving what forward_step gives."""
    import numpy as np

    from onefit.export.onnx import onnx_session

    model = trained_like(onefit.zoo.temporal_cnn(in_channels=4, channels=8, blocks=2, classes=3, stride=2,
                                                 padding=False))
    stream = continual(model, torch.randn(1, 4, 20))
    with pytest.raises(ValueError, match="the stream is not full yet"):
        stream.state()
    x = torch.randn(1, 4, 40)
    for t in range(25):
        stream.forward_step(x[..., t])
    state = [s.numpy() for s in stream.state()]
    onefit.export(stream.step_module(), tmp_path / "step.onnx", (x[..., 25], *map(torch.from_numpy, state)),
                  exporter="dynamo")
    session = onnx_session(tmp_path / "step.onnx")
    names = [i.name for i in session.get_inputs()]
    for t in range(25, 35):
        output, *state = session.run(None, dict(zip(names, [x[..., t].numpy(), *state])))
        expected = stream.forward_step(x[..., t]).numpy()
        assert np.allclose(output, expected, atol=1e-5), (t, np.abs(output - expected).max(), output.shape, expected.shape)
