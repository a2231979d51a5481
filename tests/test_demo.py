import json

import pytest
from typer.testing import CliRunner

from conftest import said
from onefit.cli import app
from onefit.demo import DemoConfig, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "run"
    return folder, run_demo(folder, DemoConfig(pretrain_epochs=1, family_epochs=1, rows=8, widths=(8, 16), blocks=(2, 2),
                                        search_budget=12), progress=False)


def test_demo_tabulates_sub_models_from_smallest_to_largest(demo_run):
    folder, result = demo_run
    rows = result["rows"]
    assert len(rows) == 8
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    assert rows[0]["params"] < rows[-1]["params"] / 5
    assert all(0 <= r["accuracy"] <= 100 and r["latency_b1"]["median_ms"] > 0 for r in rows)
    saved = json.loads((folder / "table.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert (folder / "config.json").exists() and (folder / "family" / "family.json").exists()


def test_cli_exports_a_sub_model_from_the_demo_run(demo_run):
    folder, result = demo_run
    runner = CliRunner()
    budget = result["rows"][4]["params"]
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
    assert "demo" in runner.invoke(app, ["--help"]).output
    bad = runner.invoke(app, ["demo", "--family-epochs", "0"])
    assert bad.exit_code != 0 and "family-epochs" in bad.output


def test_demo_table_prints_every_row(demo_run, capsys):
    from onefit.demo import print_table

    _, result = demo_run
    print_table(result)
    out = capsys.readouterr().out
    assert f"{len(result['rows'])} shown" in out
    assert all(row["summary"] in out for row in result["rows"])


def test_demo_ends_with_the_searched_front(demo_run, capsys):
    from onefit.demo import print_table

    folder, result = demo_run
    front = result["front"]
    assert front["evaluated"] == 12 and front["front"]
    assert {"front.json", "front.csv", "study.db"} <= {p.name for p in folder.iterdir()}
    assert len(list((folder / "plots").glob("front_*.png"))) == 3  # one per pair of three objectives
    print_table(result)
    out = capsys.readouterr().out
    assert f"{len(front['front'])} of 12 evaluated" in out and front["summaries"][0] in out


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
