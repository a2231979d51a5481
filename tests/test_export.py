"""ONNX export: parity for every zoo model, int8 paths, and failures that leave nothing behind."""

import pytest
import torch
from torch import nn

import onefit
from onefit.export import ExportError, export
from conftest import MODELS, randomize_norms


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_sub_model_exports_with_parity(name, tmp_path):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    family = onefit.elasticize(randomize_norms(build()), (x,))
    for arch in (family.space.min(), family.space.max()):
        report = export(family.extract(arch), tmp_path / f"{name}.onnx", (x,))
        assert report.max_abs_error < 1e-4 and report.cosine > 0.99999
        assert (tmp_path / f"{name}.onnx").stat().st_size == report.bytes


def test_dynamo_exporter_gives_a_dynamic_batch(tmp_path):
    from onefit.export.onnx import onnx_session, run_onnx

    model = onefit.zoo.mlp(hidden=16).eval()
    report = export(model, tmp_path / "m.onnx", (torch.randn(2, 1, 8, 8),), exporter="dynamo")
    assert report.exporter == "dynamo"
    session = onnx_session(tmp_path / "m.onnx")
    x = torch.randn(7, 1, 8, 8)
    assert torch.allclose(torch.from_numpy(run_onnx(session, (x,))), model(x), atol=1e-5)


@pytest.fixture(scope="module")
def trained():
    from onefit.data import digits

    train_data, test_data = digits(batch_size=64)
    torch.manual_seed(0)
    cnn = onefit.train_plain(onefit.zoo.plain_cnn(widths=(8, 16), blocks=2), train_data, 2, progress=False)
    mlp = onefit.train_plain(onefit.zoo.mlp(hidden=32), train_data, 2, progress=False)
    return train_data, test_data, cnn, mlp


def test_int8_uses_static_qdq_for_convolutions_and_dynamic_for_linear(trained, tmp_path):
    train_data, test_data, cnn, mlp = trained
    x = next(iter(test_data))[0][:4]
    fp32 = export(cnn, tmp_path / "cnn.onnx", (x,))
    q = export(cnn, tmp_path / "cnn8.onnx", (x,), quantize="int8", calibration=train_data, eval_data=test_data)
    assert q.method == "static-qdq" and q.bytes < fp32.bytes and q.cosine > 0.98
    assert abs(q.accuracy["change"]) < 5
    d = export(mlp, tmp_path / "mlp8.onnx", (x,), quantize="int8", eval_data=test_data)
    assert d.method == "dynamic" and abs(d.accuracy["change"]) < 5


def _int8_weight_range(path) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    initializers = onnx.load(str(path)).graph.initializer
    weights = [numpy_helper.to_array(t) for t in initializers if t.data_type == onnx.TensorProto.INT8]
    assert weights, "the int8 file holds no int8 weights"
    return int(max(np.abs(w.astype(np.int32)).max() for w in weights))


def test_int8_weights_are_7_bit_unless_full_range_is_asked(trained, tmp_path):
    # 8-bit weights overflow the u8 x s8 pair sums of x86 CPUs without VNNI (cosine 0.9967 on an AMD
    # EPYC for the digits CNN); 7-bit ones run everywhere.
    train_data, test_data, cnn, mlp = trained
    x = next(iter(test_data))[0][:4]
    for model, calibration in ((cnn, train_data), (mlp, None)):
        export(model, tmp_path / "r.onnx", (x,), quantize="int8", calibration=calibration)
        export(model, tmp_path / "f.onnx", (x,), quantize="int8", calibration=calibration, reduce_range=False)
        assert _int8_weight_range(tmp_path / "r.onnx") <= 64 < _int8_weight_range(tmp_path / "f.onnx")


def test_bad_calibration_is_a_clear_error_and_leaves_no_file(trained, tmp_path):
    _, test_data, cnn, _ = trained
    x = next(iter(test_data))[0][:4]
    target = tmp_path / "cnn8.onnx"
    with pytest.raises(ValueError, match="needs calibration"):
        export(cnn, target, (x,), quantize="int8")
    with pytest.raises(ValueError, match=r"calibration batch 0 has shape \(4, 64\); expected \(batch, \*\(1, 8, 8\)\)"):
        export(cnn, target, (x,), quantize="int8", calibration=[x.flatten(1)])
    with pytest.raises(ValueError, match="quantize must be one of"):
        export(cnn, target, (x,), quantize="int4")
    assert list(tmp_path.iterdir()) == []


class Unexportable(nn.Module):
    def forward(self, x):
        return torch.from_numpy(x.numpy() * 2)  # leaves torch: the tracer cannot follow (dynamo can)


class Drifts(nn.Module):
    """Exports fine but its PyTorch output is not what the graph computes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x) * (1.0 if self.calls == 1 else 2.0)  # traced once, then drifts


def test_failures_are_loud_and_leave_nothing_at_the_target(tmp_path):
    target = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match="torchscript: ExportError: the trace froze an input-dependent value"):
        export(Unexportable(), target, (torch.randn(2, 4),), exporter="torchscript")
    with pytest.raises(ExportError, match="parity check failed for Drifts"):
        export(Drifts(), target, (torch.randn(2, 4),), exporter="torchscript")
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".onnx"]


class FreezesMean(nn.Module):
    """Computes a Python number from its input: a trace keeps the example's value as a constant."""

    def __init__(self, how: str):
        super().__init__()
        self.fc, self.how = nn.Linear(8, 4), how

    def forward(self, x):
        if self.how == "float":
            centre = float(x.mean())
        elif self.how == "item":
            centre = x.mean().item()
        else:
            centre = float(x.detach().numpy().mean())
        return self.fc(x - centre)


@pytest.mark.parametrize("how", ["float", "item", "numpy"])
def test_a_module_that_freezes_an_input_dependent_value_is_not_verified(how, tmp_path):
    module = FreezesMean(how).eval()
    example = (torch.randn(2, 8) + 3.0,)
    with pytest.raises(ExportError, match="froze an input-dependent value into a constant"):
        onefit.export(module, tmp_path / "m.onnx", example, exporter="torchscript")
    assert not list(tmp_path.iterdir())
    # the dynamo exporter follows the value symbolically: then the file is right on new inputs
    report = onefit.export(module, tmp_path / "m.onnx", example)
    from onefit.export.onnx import onnx_session, run_onnx

    x = torch.randn(7, 8) * 5 - 2
    got = torch.from_numpy(run_onnx(onnx_session(tmp_path / "m.onnx"), (x,)))
    assert report.exporter == "dynamo" and torch.allclose(got, module(x), atol=1e-5)


def test_a_graph_holding_the_example_as_a_constant_fails_parity_on_other_inputs(tmp_path):
    from onefit.export.onnx import onnx_session, parity_inputs, verify

    example = (torch.randn(2, 8) + 3.0,)
    module = FreezesMean("float").eval()

    class Baked(nn.Module):  # what a trace of FreezesMean holds: the example's mean as a number
        def __init__(self):
            super().__init__()
            self.fc, self.centre = module.fc, float(example[0].mean())

        def forward(self, x):
            return self.fc(x - self.centre)

    onefit.export(Baked(), tmp_path / "baked.onnx", example)
    session, inputs = onnx_session(tmp_path / "baked.onnx"), parity_inputs(example)
    with pytest.raises(ExportError, match="parity check failed for FreezesMean"):
        verify(session, module, inputs, atol=1e-4, floor=0.99999, what="FreezesMean")
    for name in ("random (batch 3)", "random at 4x the spread (batch 3)"):  # far off, not at the tolerance
        with pytest.raises(ExportError, match=r"on random.*max abs error [0-9.]+e?-?0?[0-9]* \(allowed"):
            verify(session, module, {name: inputs[name]}, atol=1e-2, floor=0.99999, what="FreezesMean")


def test_parity_is_checked_on_inputs_unlike_the_example_and_on_real_data(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    data = [(torch.randn(5, 8), torch.zeros(5, dtype=torch.long))]
    report = onefit.export(model, tmp_path / "m.onnx", (torch.randn(2, 8),), eval_data=data)
    assert report.parity_inputs == ["example + 1 row (batch 3)", "random (batch 3)",
                                    "random at 4x the spread (batch 3)", "data (batch 5)"]
    from onefit.export.onnx import parity_inputs

    tokens = parity_inputs((torch.tensor([[3, 7, 5]]),))
    assert all(x.dtype == torch.long and 3 <= int(x.min()) and int(x.max()) <= 7 for (x,) in tokens.values())
    assert "random at 4x the spread (batch 3)" not in tokens  # integer inputs are not scaled
