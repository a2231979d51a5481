"""The command line: exit status, flags that name their problem, the trust boundary."""

import json
import shutil
import textwrap

import pytest
from typer.testing import CliRunner

from conftest import said
from onefit.cli import app

runner = CliRunner()


def test_version_and_exit_statuses():
    import onefit

    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"onefit {onefit.__version__}"
    assert runner.invoke(app, ["inspect", "onefit.zoo:mlp", "--nope"]).exit_code == 2  # usage
    failed = runner.invoke(app, ["inspect", "onefit.zoo:mlp", "--input-shape", "1,3,8,8"])  # the work failed
    assert failed.exit_code == 1 and failed.output.startswith("error: ")


@pytest.mark.parametrize("args, flag, message", [
    (["--input-shape", "1,a,8"], "--input-shape", "positive integers separated by commas, e.g. 1,1,8,8; got '1,a,8'"),
    (["--kwargs", "{bad"], "--kwargs", "expected a JSON object"),
    (["--kwargs", "[1, 2]"], "--kwargs", "got a JSON list"),
])
def test_inspect_flags_name_their_problem(args, flag, message):
    out = runner.invoke(app, ["inspect", "onefit.zoo:mlp", *args])
    assert out.exit_code == 2 and said(out.output, f"Invalid value for '{flag}'") and said(out.output, message), out.output


def test_a_factory_that_raises_is_one_line_and_the_traceback_is_behind_debug(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        import onefit
        def broken():
            raise RuntimeError("no weights here")
        def good():
            return onefit.zoo.mlp(hidden=16, layers=1)
    """))
    monkeypatch.chdir(tmp_path)  # the working directory is on the import path, as with python -m
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert runner.invoke(app, ["inspect", "mymodels:good", "--json"]).exit_code == 0
    out = runner.invoke(app, ["inspect", "mymodels:broken"])
    assert out.exit_code == 1
    assert out.output.strip() == "error: the model factory 'mymodels:broken' raised RuntimeError: no weights here"
    debug = runner.invoke(app, ["--debug", "inspect", "mymodels:broken"])
    assert isinstance(debug.exception, RuntimeError) and "no weights here" in str(debug.exception)


def test_the_help_says_that_module_function_arguments_run_code():
    for command in (["inspect", "--help"], ["export", "--help"], ["search", "--help"]):
        assert said(runner.invoke(app, command).output, "imports and runs that code")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder like the demo's: a trained-for-a-step digits family and its config.json."""
    import torch

    import onefit
    from onefit.data import digits

    folder = tmp_path_factory.mktemp("cli") / "run"
    torch.manual_seed(0)
    train, _ = digits(batch_size=64)
    family = onefit.sort_(onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)),
                                            (torch.randn(1, 1, 8, 8),)))
    onefit.train(family, list(train)[:3], epochs=1, progress=False)
    family.save(folder / "family")
    (folder / "config.json").write_text(json.dumps({"data": "onefit.data:digits",
                                                    "data_kwargs": {"batch_size": 64}, "seed": 0}))
    return folder


@pytest.mark.parametrize("args, flag, message", [
    (["--arch", "notjson"], "--arch", "expected a JSON object such as"),
    (["--arch", "[1,2]"], "--arch", "got a JSON list"),
    (["--arch", '{"depth:stages.0": 1.0}'], "--arch", "value 1.0 (float, not int) is not allowed"),
    (["--name", "../../x"], "--name", "not a path; got '../../x'"),
    (["--name", "a/b"], "--name", "not a path"),
])
def test_export_flags_name_their_problem(run_folder, args, flag, message):
    out = runner.invoke(app, ["export", str(run_folder), *args])
    assert out.exit_code == 2 and said(out.output, f"Invalid value for '{flag}'") and said(out.output, message), out.output
    assert not (run_folder.parent / "x.onnx").exists() and not list(run_folder.parent.glob("**/x*.onnx"))


def test_export_without_data_refuses_rather_than_keep_the_largest_statistics(run_folder, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(run_folder / "family", bare / "family")  # no config.json: no data named
    out = runner.invoke(app, ["export", str(bare), "--params", "5000"])
    assert out.exit_code == 1 and "names no data (no config.json)" in out.output
    assert not (bare / "models").exists() or not list((bare / "models").iterdir())
    ok = runner.invoke(app, ["export", str(bare), "--params", "5000", "--data", "onefit.data:digits"])
    assert ok.exit_code == 0, ok.output
    kept = runner.invoke(app, ["export", str(bare), "--params", "5000", "--keep-bn-statistics", "--name", "kept"])
    assert kept.exit_code == 0 and (bare / "models" / "kept.onnx").exists()


def test_a_run_config_naming_foreign_data_code_is_not_imported_unasked(run_folder, tmp_path, monkeypatch):
    folder = tmp_path / "sent"
    shutil.copytree(run_folder, folder)
    (tmp_path / "evil.py").write_text(
        f"import pathlib\ndef data(**kw):\n    pathlib.Path({str(tmp_path / 'ran')!r}).write_text('x')\n"
        "    from onefit.data import digits\n    return digits()\n")
    monkeypatch.chdir(tmp_path)
    (folder / "config.json").write_text(json.dumps({"data": "evil:data", "seed": 0}))
    for command in (["export", str(folder)], ["search", str(folder), "--budget", "2"]):
        out = runner.invoke(app, command)
        assert out.exit_code == 1 and said(out.output, "'evil:data' is not one of onefit's own factories"), out.output
        assert not (tmp_path / "ran").exists()
    out = runner.invoke(app, ["export", str(folder), "--trust-code"])
    assert out.exit_code == 0 and (tmp_path / "ran").exists(), out.output
