"""Target runtimes: each builds a verified file, scores it and times it; OpenVINO where it installs."""

import pytest
import torch

from onefit.runtimes import RUNTIMES, RuntimeMissing, runtime
from onefit.runtimes.cpu import cpu_flags, describe, int8_weights


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]


@pytest.mark.parametrize("name", sorted(RUNTIMES))
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_every_runtime_builds_a_verified_scored_and_timed_file(name, precision, tmp_path):
    try:
        target = runtime(name)
    except RuntimeMissing as err:
        pytest.skip(str(err))
    model, data = _model_and_data()
    built = target.build(model, tmp_path / "m", precision, examples=(data[0][0][:1],), calibration=data,
                         eval_data=data)
    assert built.path.exists() and all(p.exists() for p in built.files)
    assert built.cosine > (0.99999 if precision == "fp32" else 0.98)
    assert any(k.startswith("data") for k in built.parity_inputs)
    assert built.metric["onnx"] >= (100.0 if precision == "fp32" else 80.0)  # the labels are the model's own
    if precision == "int8":  # a plain model has no trained ranges: the runtime's post-training quantization
        assert built.method == {"onnxruntime": "static-qdq", "openvino": "nncf-ptq"}[name]
    latency = target.latency(built.path, (torch.rand(4, 1, 8, 8),), threads=1, repeats=3)
    assert latency.backend == name and latency.batch == 4 and 0 < latency.median_ms <= latency.p90_ms


def test_a_runtime_that_is_not_installed_says_how_to_get_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("no openvino")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(RuntimeMissing, match=r"pip install 'onefit\[openvino\]'"):
        runtime("openvino")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'; choose one of"):
        runtime("tensorrt")


def test_the_int8_weight_range_follows_the_instruction_sets():
    assert int8_weights({"avx2", "avx512f"})[0] is True  # no VNNI: 7-bit weights
    assert int8_weights({"avx2", "avx_vnni"}) == (False, "8-bit weights: the CPU has avx_vnni, which sums int8 "
                                                         "products in int32")
    assert int8_weights({"fp", "asimd", "asimddp"})[0] is False  # ARM with the dot product
    here = describe()
    assert set(here["isa"]) <= cpu_flags() and here["int8_reduce_range"] == int8_weights()[0]
