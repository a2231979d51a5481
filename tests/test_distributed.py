"""Family training under torchrun: 2 processes train the family 1 process trains on the same global
batch, every rank's parameters stay identical, only rank 0 writes, and a killed torchrun job resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from onefit.tasks import DataError
from onefit.train import distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "distributed_worker.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def _worker(out: Path, *args, processes: int = 2) -> list[dict]:
    command = (TORCHRUN if processes > 1 else [sys.executable]) + [str(WORKER), str(out), *args]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow
def test_two_processes_train_the_family_one_process_trains_on_the_same_batches(tmp_path):
    alone = _worker(tmp_path / "one", processes=1)[0]
    ranks = _worker(tmp_path / "two")
    assert [r["world"] for r in ranks] == [2, 2] and alone["world"] == 1
    assert all(gap == 0.0 for r in ranks for gap in r["gaps"]) and len(ranks[1]["gaps"]) == 6  # after every step
    single = torch.tensor(alone["params"])
    for r in ranks:
        assert torch.allclose(torch.tensor(r["params"]), single, atol=1e-5, rtol=0)
    assert not torch.equal(single, torch.tensor(_worker_start()))  # it trained


def _worker_start() -> list[float]:
    sys.path.insert(0, str(WORKER.parent))
    try:
        import distributed_worker
    finally:
        sys.path.pop(0)
    return distributed_worker.flat(distributed_worker.family()).tolist()


@pytest.mark.slow
def test_the_checks_catch_a_sync_that_reduces_only_the_smallest_sub_models_pass(tmp_path):
    """pytorch issue 69031's trap, written out: the ranks drift apart after the first step."""
    ranks = _worker(tmp_path / "trap", "--last-pass-only")
    assert max(ranks[1]["gaps"]) > 1e-3


def test_a_batch_the_ranks_cannot_share_evenly_is_refused_before_training():
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.zeros(10, 2), torch.zeros(10)), batch_size=4)
    with pytest.raises(DataError, match="batch size is 4 and the last batch holds 2 of the 10 samples; use a batch "
                                        "size that is a multiple of 3"):
        distributed.check_loader(data, 3)
    distributed.check_loader(data, 2)  # 4 and 2 both split in two
    with pytest.raises(DataError, match="drop_last=True"):
        distributed.check_loader(DataLoader(TensorDataset(torch.zeros(9, 2)), batch_size=4), 2)
    with pytest.raises(DataError, match="holds no tensor"):
        distributed.shard(("a", 1), 0, 2)


def test_a_dict_batch_is_sharded_by_its_first_dimension_only():
    batch = {"input_ids": torch.arange(12).reshape(4, 3), "scale": torch.tensor(2.0), "mask": torch.ones(4, 3)}
    part = distributed.shard(batch, rank=1, world=2)
    assert part["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]] and part["scale"].item() == 2.0
    assert part["mask"].shape == (2, 3)


def test_a_world_size_without_the_rest_of_torchruns_environment_is_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR.* start onefit with torchrun"):
        distributed.init_from_env()


SMALL = ["pretrain.epochs=1", "train.epochs=3", "search.budget=6", "export.max_models=1", "targets.repeats=3",
         "targets.precisions=['fp32']", "targets.batch_sizes=[1]", "model.kwargs.widths=[8, 16]",
         "model.kwargs.blocks=[2, 2]"]


def _onefit_run(out: Path, wait: bool = True):
    config = ROOT / "src" / "onefit" / "examples" / "digits.toml"
    sets = [a for s in SMALL for a in ("--set", s)]
    command = TORCHRUN + ["-m", "onefit", "run", str(config), "--out", str(out), "--quiet", *sets]
    if not wait:
        return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, all at once (as a cluster's scheduler does)."""
    tree, found = {pid}, True
    while found:
        found = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            child, parent = int(stat.parent.name), int(fields[1])
            if parent in tree and child not in tree:
                tree.add(child)
                found = True
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _epochs(folder: Path) -> int:
    try:
        return json.loads((folder / "family.json").read_text())["progress"]["epoch"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_onefit_run_under_torchrun_trains_on_every_rank_and_onefit_train_resumes_it_after_a_kill(tmp_path):
    import onefit

    whole = tmp_path / "whole"
    said = _onefit_run(whole)
    assert "train ... (data parallel over 2 processes)" in said and said.count("run folder:") == 1  # rank 0 speaks
    record = json.loads((whole / "run.json").read_text())
    assert record["stages"]["train"]["processes"] == 2 and "processes" not in record["stages"]["search"]
    assert (whole / "report.html").exists()

    killed = tmp_path / "killed"
    job = _onefit_run(killed, wait=False)
    deadline = time.time() + 300
    while _epochs(killed / "family") < 1 and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill_tree(job.pid)  # the agent and both ranks (torchrun starts each rank in a session of its own)
    job.wait()
    held = _epochs(killed / "family")
    assert 1 <= held < 3, f"killed after {held} epochs"
    assert "finished" not in json.loads((killed / "run.json").read_text())["stages"]["train"]
    resumed = subprocess.run(TORCHRUN + ["-m", "onefit", "train", str(killed), "--quiet"], env=_env(),
                             capture_output=True, text=True, timeout=600)  # onefit train RUN goes on from there
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "to redo with it: search, export, report" in resumed.stdout
    assert [h["epoch"] for h in onefit.load(killed / "family").history] == [1, 2, 3]
    a, b = onefit.load(whole / "family").state_dict(), onefit.load(killed / "family").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed = uninterrupted, bit for bit
