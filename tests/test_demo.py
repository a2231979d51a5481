import json

import pytest
from typer.testing import CliRunner

from conftest import said
from onefit.cli import app


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "run"
    out = CliRunner().invoke(app, ["demo", "--out", str(folder), "--pretrain-epochs", "1", "--family-epochs", "1",
                                   "--set", "search.budget=12", "--set", "model.kwargs.widths=[8, 16]",
                                   "--set", "model.kwargs.blocks=[2, 2]", "--set", "export.max_models=3",
                                   "--set", "targets.repeats=3", "--quiet"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    return folder, out.output


def test_the_demo_is_onefit_run_on_the_bundled_config_and_shows_what_it_exported(demo_run):
    folder, output = demo_run
    record = json.loads((folder / "run.json").read_text())
    assert all("finished" in s for s in record["stages"].values()) and len(record["stages"]) == 6
    assert record["config"]["train"]["epochs"] == 1 and record["config"]["model"]["zoo"] == "resnet"
    manifest = json.loads((folder / "models" / "manifest.json").read_text())
    files = [f["file"] for m in manifest["models"] for f in m["files"]]
    assert len(manifest["models"]) >= 3 and all(name in output for name in files)
    assert "front: " in output and "of 12 evaluated" in output
    assert (folder / "report.html").exists() and (folder / "config.toml").read_text().startswith("# onefit run")


def test_cli_exports_a_sub_model_from_the_demo_run(demo_run):
    folder, _ = demo_run
    runner = CliRunner()
    models = json.loads((folder / "models" / "manifest.json").read_text())["models"]
    budget = models[len(models) // 2]["params"]
    out = runner.invoke(app, ["export", str(folder), "--params", str(budget), "--name", "small"])
    assert out.exit_code == 0, out.output
    report = json.loads((folder / "models" / "small.json").read_text())
    assert report["method"] == "fp32" and report["cosine"] > 0.99999 and report["accuracy"]["change"] == 0
    assert (folder / "models" / "small.onnx").stat().st_size == report["bytes"]
    # A one-epoch demo family quantizes roughly; the floor is the caller's to set, and a miss is loud.
    out = runner.invoke(app, ["export", str(folder), "--params", str(budget), "--int8", "--min-cosine", "0.9"])
    assert out.exit_code == 0, out.output
    assert json.loads((folder / "models" / "model-int8.json").read_text())["method"] == "static-qdq"
    strict = runner.invoke(app, ["export", str(folder), "--int8", "--min-cosine", "0.9999999", "--name", "strict"])
    assert strict.exit_code == 1 and "parity check failed" in strict.output
    assert not (folder / "models" / "strict-int8.onnx").exists()
    bad = runner.invoke(app, ["export", str(folder), "--arch", '{"depth:stages.0": 9}'])
    assert bad.exit_code == 2 and said(bad.output, "allowed values are [1, 2]")
    missing = runner.invoke(app, ["export", str(folder / "nope")])
    assert missing.exit_code == 1 and "family.json is missing" in missing.output


def test_cli_lists_its_commands_and_rejects_bad_options():
    runner = CliRunner()
    assert all(c in runner.invoke(app, ["--help"]).output for c in ("demo", "run", "train", "search", "export", "report"))
    bad = runner.invoke(app, ["demo", "--family-epochs", "0"])
    assert bad.exit_code != 0 and "family-epochs" in bad.output


def test_cli_search_resumes_the_demo_study_and_checks_its_options(demo_run):
    folder, _ = demo_run
    runner = CliRunner()
    out = runner.invoke(app, ["search", str(folder), "--budget", "16", "--searcher", "nsga2",
                              "--constraint", "params<=20000"])
    assert out.exit_code == 1 and "different problem: its constraints differ" in out.output
    out = runner.invoke(app, ["search", str(folder), "--budget", "16", "--searcher", "nsga2"])
    assert out.exit_code == 0, out.output
    saved = json.loads((folder / "front.json").read_text())
    assert saved["evaluated"] == 16 and "of 16 evaluated" in out.output
    out = runner.invoke(app, ["search", str(folder), "--study", "small", "--budget", "6",
                              "--constraint", "params<=20000"])
    assert out.exit_code == 0, out.output
    assert all(t["metrics"]["params"] <= 20000 for t in json.loads((folder / "front.json").read_text())["front"])
    for args, message in ((["--searcher", "grid"], "unknown searcher 'grid'; choose one of"),
                          (["--constraint", "params<50"], "a constraint is NAME<=BOUND"),
                          (["--objectives", "error,latency_ms"], "unknown metric(s) ['latency_ms']"),
                          (["--constraint", "params<=10"], "no sub-model satisfies the constraint params <= 10")):
        bad = runner.invoke(app, ["search", str(folder), "--study", "bad", *args])
        assert bad.exit_code == 2 and said(bad.output, message), bad.output
