import json
import random

import pytest
import torch

import onefit
from onefit.cost import LatencyModel, machine_roofline, measure_latency, spearman
from onefit.cost.roofline import Roofline


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_latency_is_measured_with_its_conditions(backend):
    model = onefit.zoo.mlp(hidden=16)
    lat = measure_latency(model, torch.randn(3, 1, 8, 8), backend=backend, threads=1, repeats=7, warmup=2)
    assert 0 < lat.median_ms <= lat.p90_ms
    assert (lat.backend, lat.batch, lat.threads, lat.repeats) == (backend, 3, 1, 7)
    assert torch.get_num_threads() >= 1


def test_bad_latency_requests_are_clear_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        measure_latency(onefit.zoo.mlp(), torch.randn(1, 64), backend="tpu")
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(onefit.zoo.mlp(), torch.randn(1, 64), repeats=0)
    with pytest.raises(TypeError, match="needs an nn.Module"):
        measure_latency("model.onnx", torch.randn(1, 64), backend="eager")


def synthetic_family():
    return onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))


def test_latency_model_recovers_a_linear_cost_and_round_trips(tmp_path):
    family = synthetic_family()
    rng = random.Random(0)
    archs = [family.space.sample(rng) for _ in range(30)]
    truth = [0.05 + 1e-6 * onefit.count_macs(family, a) + 0.002 * onefit.costs(family, a)["layers"] for a in archs]
    model = LatencyModel.fit(family, archs[:20], truth[:20], backend="synthetic", batch=1)
    held = model.error(family, archs[20:], truth[20:])
    assert held["mape"] < 0.01 and held["spearman"] > 0.99
    assert all(c >= 0 for c in model.coef)
    family.latency_models["synthetic-b1"] = model
    family.save(tmp_path / "f")
    loaded = onefit.load(tmp_path / "f", model=onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)))
    assert loaded.latency_models["synthetic-b1"].predict(loaded, archs[25]) == pytest.approx(model.predict(family, archs[25]))
    with pytest.raises(ValueError, match="at least"):
        LatencyModel.fit(family, archs[:3], truth[:3], backend="x", batch=1)


def test_spearman_sees_order_only():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_roofline_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEFIT_CACHE", str(tmp_path))
    calls = []
    real = onefit.cost.roofline.measure_roofline

    def counted(threads=None, seconds=0.5):
        calls.append(threads)
        return real(threads, seconds=0.05)

    monkeypatch.setattr(onefit.cost.roofline, "measure_roofline", counted)
    first = machine_roofline(threads=1)
    second = machine_roofline(threads=1)
    assert first == second and len(calls) == 1
    assert first.fp32_gflops > 0.5 and first.bandwidth_gbs > 0.5
    # the int8 peak includes ONNX Runtime's MatMulInteger (torch's int8 GEMM reached 2 GOP/s on an
    # AMD EPYC, where ONNX Runtime ran 344): at least what one small MatMulInteger reaches
    ort_int8 = onefit.cost.roofline._onnxruntime_matmul_rate(256, 1, 0.05, int8=True) / 1e9
    assert ort_int8 > 0 and first.int8_gops >= 0.5 * ort_int8
    saved = json.loads(next(tmp_path.glob("roofline-*.json")).read_text())
    assert saved["threads"] == 1


def test_roofline_bounds_and_efficiency():
    r = Roofline(fp32_gflops=100.0, int8_gops=400.0, bandwidth_gbs=10.0, threads=1)
    assert r.bound_ms(macs=50_000_000, bytes_moved=0) == pytest.approx(1.0)  # 1e8 FLOPs at 1e11 FLOP/s
    assert r.bound_ms(macs=0, bytes_moved=10_000_000) == pytest.approx(1.0)  # 1e7 bytes at 1e10 B/s
    assert r.efficiency(macs=50_000_000, latency_ms=2.0) == pytest.approx(0.5)
    assert r.efficiency(macs=50_000_000, latency_ms=1.0, int8=True) == pytest.approx(0.25)


def test_latency_with_a_cost_carries_its_roofline(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEFIT_CACHE", str(tmp_path))
    monkeypatch.setattr(onefit.cost.roofline, "measure_roofline",
                        lambda threads=None, seconds=0.5: Roofline(100.0, 400.0, 10.0, threads or 1))
    family = synthetic_family()
    arch = family.space.max()
    lat = measure_latency(family.extract(arch), torch.randn(4, 1, 8, 8), backend="eager", repeats=5,
                          cost=onefit.costs(family, arch))
    cost = onefit.costs(family, arch)
    macs, moved = cost["macs"] * 4, cost["weight_bytes"] + cost["activation_bytes"] * 4
    assert lat.efficiency == pytest.approx(2 * macs / (lat.median_ms * 1e-3) / 100e9)
    assert lat.bound_ms == pytest.approx(max(2 * macs / 100e9, moved / 10e9) * 1e3)
