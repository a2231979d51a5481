"""Search workers sharing one study on a real PostgreSQL server (started here, thrown away after):
the study's budget exactly, no arch twice, a killed worker's claim taken over, the whole front
everywhere, and clear errors for URLs that cannot connect and studies of another problem."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import postgres
from onefit.search import NSGA2Search, Problem, search
from onefit.search.problem import toy_problem
from onefit.search.study import Study, StudyError

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "search_worker.py"


@pytest.fixture(scope="module")
def database():
    try:
        with postgres.server() as url:
            yield url
    except postgres.Unavailable as err:
        pytest.skip(str(err))


def _start(url, out: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(WORKER), url, str(out), *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(job: subprocess.Popen) -> None:
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output[-3000:]


def _study(url, name):
    import optuna

    if url.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        url = JournalStorage(JournalFileBackend(url))
    return optuna.load_study(study_name=name, storage=url)


def _keys(study) -> list:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_four_workers_evaluate_the_study_budget_exactly_once_each_and_all_see_the_whole_front(database, tmp_path):
    url, name = database, "four"
    jobs = [_start(url, tmp_path / f"w{i}.json", "--budget", "60", "--study", name) for i in range(4)]
    for job in jobs:
        _finish(job)
    outs = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(4)]
    evaluated = [tuple(sorted(a.items())) for o in outs for a in o["evaluated"]]
    assert len(evaluated) == 60 and len(set(evaluated)) == 60  # 0 duplicates, 0 lost
    assert sum(1 for o in outs if o["evaluated"]) >= 2  # the work was shared
    keys = _keys(_study(url, name))
    assert len(keys) == 60 and len(set(keys)) == 60 and set(keys) == set(evaluated)
    fronts = [sorted(json.dumps(a, sort_keys=True) for a in o["front"]) for o in outs]
    assert all(f == fronts[0] for f in fronts) and all(o["study_trials"] == 60 for o in outs)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_a_worker_killed_mid_evaluation_leaves_its_claim_to_one_other_worker(kind, database, tmp_path):
    """On a database, and on optuna's journal file (a shared file system, no database)."""
    from onefit.search.claims import claims_for
    from onefit.search.study import storage_url

    url = database if kind == "postgresql" else str(tmp_path / "study.journal")
    name = "killed"
    doomed = _start(url, tmp_path / "doomed.json", "--budget", "60", "--study", name, "--hang-after", "2",
                    "--timeout", "2")
    hung = (tmp_path / "doomed.hung")
    deadline = time.time() + 120
    while not hung.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert hung.exists(), doomed.communicate()[0][-2000:]
    others = [_start(url, tmp_path / f"w{i}.json", "--budget", "60", "--study", name, "--timeout", "2")
              for i in range(3)]
    time.sleep(0.5)
    os.killpg(doomed.pid, signal.SIGKILL)  # mid-evaluation, its claim held
    doomed.wait()
    for job in others:
        _finish(job)
    keys = _keys(_study(url, name))
    assert len(keys) == 60 and len(set(keys)) == 60
    lost = tuple(sorted(json.loads(hung.read_text()).items()))
    assert lost in keys  # evaluated by the worker that took the claim over
    claims = claims_for(storage_url(url), name)
    assert claims.takeovers() == 1 and claims.pending() == 0


def test_a_worker_on_a_study_of_another_problem_is_refused_and_writes_nothing(database):
    search(toy_problem(), NSGA2Search(seed=0), budget=5, storage=database, study_name="other", share=True,
           progress=False)
    before = len(_study(database, "other").get_trials())
    smaller = Problem(_smaller_space(), toy_problem().metrics, ("loss", "size"))  # the same metrics, fewer archs
    with pytest.raises(StudyError, match="created for a different problem: its space"):
        search(smaller, NSGA2Search(seed=0), budget=5, storage=database, study_name="other", share=True,
               progress=False)
    assert len(_study(database, "other").get_trials()) == before


def _smaller_space():
    from onefit.space import Dimension, Space

    return Space([Dimension("a", "width", (1, 2)), Dimension("b", "depth", (1, 2, 3)),
                  Dimension("c", "bits", (4, 8, 32))])


def test_urls_that_cannot_connect_name_the_cause_and_never_the_password(database):
    port = database.rsplit(":", 1)[1].split("/")[0]
    wrong_password = database.replace(postgres.PASSWORD, "not-the-password")
    with pytest.raises(StudyError, match="password authentication failed") as err:
        Study(wrong_password, toy_problem())
    assert "not-the-password" not in str(err.value) and "***" in str(err.value)
    wrong_port = database.replace(f":{port}/", f":{_closed_port()}/")
    with pytest.raises(StudyError, match="cannot open the study storage .*(refused|connect)"):
        Study(wrong_port, toy_problem())


def _closed_port() -> int:
    return postgres._free_port()  # free: nothing listens there


def test_a_postgresql_url_without_a_driver_installed_says_which_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "psycopg2") else real(name, *a))
    with pytest.raises(StudyError, match=r"no PostgreSQL driver is installed; pip install 'onefit\[postgresql\]'"):
        Study("postgresql://someone:secret@127.0.0.1:1/db", toy_problem())


def test_share_needs_a_storage():
    with pytest.raises(ValueError, match="share=True needs a storage"):
        search(toy_problem(), NSGA2Search(), budget=3, share=True)


@pytest.mark.slow
def test_onefit_search_on_a_run_folder_joins_a_shared_study_and_records_no_password(database, tmp_path):
    from typer.testing import CliRunner

    from onefit.cli import app
    from onefit.demo import example_config
    from onefit.run import run

    out = tmp_path / "digits"
    run(example_config("digits", ["pretrain.epochs=0", "train.epochs=1", "search.budget=6", "export.max_models=1",
                                  "targets.repeats=3", "targets.precisions=['fp32']", "targets.batch_sizes=[1]",
                                  "model.kwargs.widths=[8, 16]", "model.kwargs.blocks=[2, 2]"]),
        out, progress=False, echo=lambda line: None)
    said = CliRunner().invoke(app, ["search", str(out), "--storage", database, "--study", "run", "--workers-share",
                                    "--claim-timeout", "30"])
    assert said.exit_code == 0, said.output
    assert "the study shared by workers at postgresql+psycopg://onefit:***@127.0.0.1" in said.output
    assert postgres.PASSWORD not in said.output and postgres.PASSWORD not in (out / "run.json").read_text()
    assert len(_study(database, "run").get_trials()) == 6 and (out / "front.json").exists()
    assert "to redo with it: export, report" in said.output
    bad = CliRunner().invoke(app, ["search", str(out), "--workers-share"])
    assert bad.exit_code == 2 and "needs --storage" in bad.output
