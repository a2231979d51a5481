import json

from typer.testing import CliRunner

from onefit.cli import app
from onefit.demo import DemoConfig, run_demo


def test_demo_tabulates_sub_models_from_smallest_to_largest(tmp_path):
    result = run_demo(tmp_path / "run", DemoConfig(pretrain_epochs=1, family_epochs=1, rows=8), progress=False)
    rows = result["rows"]
    assert len(rows) == 8
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    assert rows[0]["params"] < rows[-1]["params"] / 5
    assert all(0 <= r["accuracy"] <= 100 and r["latency_b1"]["median_ms"] > 0 for r in rows)
    saved = json.loads((tmp_path / "run" / "table.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "run" / "config.json").exists() and (tmp_path / "run" / "family" / "family.json").exists()


def test_cli_lists_its_commands_and_rejects_bad_options():
    runner = CliRunner()
    assert "demo" in runner.invoke(app, ["--help"]).output
    bad = runner.invoke(app, ["demo", "--family-epochs", "0"])
    assert bad.exit_code != 0 and "family-epochs" in bad.output
