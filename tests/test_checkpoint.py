import json
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import onefit
from onefit.checkpoint import CheckpointError


def trained_family():
    torch.manual_seed(0)
    model, source = onefit.zoo.build("resnet", widths=[8, 16], blocks=[2, 2])
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),))
    family.source = source
    with torch.no_grad():
        for p in family.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return onefit.sort_(family).eval()


def test_round_trip_rebuilds_the_same_family(tmp_path, monkeypatch):
    family = trained_family()
    family.history = [{"epoch": 1, "loss_largest": 1.0}]
    family.save(tmp_path / "fam")
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("loading must never unpickle"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("loading must never unpickle"))
    loaded = onefit.load(tmp_path / "fam").eval()
    assert loaded.space == family.space and loaded.history == family.history
    x = torch.randn(4, 1, 8, 8)
    for arch in (family.space.min(), family.space.max()):
        with torch.no_grad(), family.activate(arch), loaded.activate(arch):
            assert torch.equal(family(x), loaded(x))
    manifest = json.loads((tmp_path / "fam" / "family.json").read_text())
    assert manifest["source"]["factory"] == "onefit.zoo:resnet"
    assert sorted(p.suffix for p in (tmp_path / "fam").iterdir()) == [".json", ".safetensors"]


def test_incomplete_tampered_or_foreign_checkpoints_are_refused(tmp_path):
    family = trained_family()
    folder = tmp_path / "fam"
    family.save(folder)
    with pytest.raises(CheckpointError, match="family.json is missing"):
        onefit.load(tmp_path / "nothing-here")
    with pytest.raises(CheckpointError, match="same architecture"):
        onefit.load(folder, model=onefit.zoo.resnet(widths=(8, 16), blocks=(2, 3)))
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        onefit.load(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        onefit.load(folder)
    (folder / "family.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        onefit.load(folder)


def test_a_save_killed_before_the_manifest_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    family = trained_family()
    folder = tmp_path / "fam"
    family.save(folder)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = family(x)
        for p in family.parameters():
            p.mul_(2)
    real = onefit.checkpoint.atomic_write

    def dies_on_manifest(path, data):
        if path.name == "family.json":
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(onefit.checkpoint, "atomic_write", dies_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        family.save(folder)
    monkeypatch.setattr(onefit.checkpoint, "atomic_write", real)
    with torch.no_grad():
        assert torch.equal(onefit.load(folder).eval()(x), before)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch, onefit
    from onefit.data import digits
    torch.manual_seed(0)
    model, source = onefit.zoo.build("mlp", hidden=32, layers=2)
    family = onefit.elasticize(model, (torch.randn(2, 1, 8, 8),))
    family.source = source
    train, _ = digits(batch_size=32)
    onefit.train(family, train, epochs=int(sys.argv[2]), checkpoint=sys.argv[1], progress=False)
""")


def test_training_killed_with_sigkill_resumes_where_it_stopped(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(folder), "200"])
    deadline = time.time() + 120
    while not (folder / "family.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((folder / "family.json").read_text())["progress"]["epoch"]
    assert 1 <= done < 200
    subprocess.run([sys.executable, str(script), str(folder), str(done + 1)], check=True, timeout=120)
    history = onefit.load(folder).history
    assert [h["epoch"] for h in history] == list(range(1, done + 2))
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


EXACT_SCRIPT = textwrap.dedent("""
    import sys, time, torch, onefit
    from torch.utils.data import DataLoader, TensorDataset
    from onefit.data import digits

    class Slow(TensorDataset):  # slow enough to be killed between two epochs
        def __getitem__(self, i):
            time.sleep(float(sys.argv[3]))
            return super().__getitem__(i)

    torch.manual_seed(0)
    train, _ = digits(batch_size=32)
    x, y = train.dataset.tensors
    data = DataLoader(Slow(x[:384], y[:384]), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    family = onefit.elasticize(model, (torch.randn(2, 1, 8, 8),))
    onefit.train(family, data, epochs=int(sys.argv[2]), checkpoint=sys.argv[1], progress=False)
""")


def test_a_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    """Loader order, sampled sub-models, dropout: a run killed with SIGKILL and resumed computes
    exactly what the run that was never stopped computes."""
    script = tmp_path / "train.py"
    script.write_text(EXACT_SCRIPT)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    uninterrupted = subprocess.Popen([sys.executable, str(script), str(whole), "5", "0"])  # beside the one killed
    proc = subprocess.Popen([sys.executable, str(script), str(resumed), "5", "0.004"])
    deadline = time.time() + 120
    while not (resumed / "family.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert uninterrupted.wait(timeout=300) == 0
    done = json.loads((resumed / "family.json").read_text())["progress"]["epoch"]
    assert 1 <= done < 5
    subprocess.run([sys.executable, str(script), str(resumed), "5", "0"], check=True, timeout=300)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    a, b = onefit.load(whole, model=model), onefit.load(resumed, model=model)
    assert [h["loss_mean"] for h in a.history] == [h["loss_mean"] for h in b.history]
    for (name, p), q in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(p, q), name


def test_training_to_fewer_epochs_than_the_checkpoint_holds_is_refused(tmp_path):
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))
    batches = [(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,)))] * 2
    onefit.train(family, batches, epochs=3, checkpoint=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"already holds 3 epochs of training; epochs=2 asks for fewer"):
        onefit.train(family, batches, epochs=2, checkpoint=tmp_path / "run", progress=False)
    with pytest.warns(UserWarning, match="already holds all 3 epochs; nothing left to train"):
        history = onefit.train(family, batches, epochs=3, checkpoint=tmp_path / "run", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]


def _rewrite(folder, manifest: dict) -> None:
    from onefit.checkpoint import _manifest_digest

    manifest["sha256"] = _manifest_digest(manifest)
    (folder / "family.json").write_text(json.dumps(manifest))


def test_loading_a_folder_never_runs_code_it_names(tmp_path, monkeypatch):
    import os

    family = trained_family()
    folder = tmp_path / "fam"
    family.save(folder)
    manifest = json.loads((folder / "family.json").read_text())
    proof = tmp_path / "ran"
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    manifest["source"] = {"factory": "os:system", "kwargs": {"command": f"touch {proof}"}}
    _rewrite(folder, manifest)
    with pytest.raises(CheckpointError, match="'os:system' is not one of onefit's own factories"):
        onefit.load(folder)
    assert not calls and not proof.exists()
    # a tampered manifest (its hash no longer matches) is refused before anything in it is used
    manifest["source"]["factory"] = "onefit.zoo:resnet"
    (folder / "family.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest was changed"):
        onefit.load(folder)
    # the caller may pass the model, or opt in; then the import is named first
    manifest["source"] = {"factory": "tests_factory_module:build", "kwargs": {}}
    _rewrite(folder, manifest)
    (tmp_path / "tests_factory_module.py").write_text(
        "import onefit\ndef build():\n    return onefit.zoo.resnet(widths=[8, 16], blocks=[2, 2])\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="trust_code=True"):
        onefit.load(folder)
    assert onefit.load(folder, model=onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2))).space == family.space
    with pytest.warns(UserWarning, match="importing and running the model factory 'tests_factory_module:build'"):
        assert onefit.load(folder, trust_code=True).space == family.space


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "holds a JSON list"),
    (b"\xff\xfe{}", "not UTF-8"),
    (json.dumps({"format": "onefit-family", "version": 1, "config": {}, "space": []}).encode(), "'weights' \\(missing\\)"),
    (json.dumps({"format": "onefit-family", "version": 1, "config": {}, "space": [], "example_inputs": [],
                 "weights": {"file": "../../etc/passwd", "sha256": "0"}}).encode(), "not a plain file name"),
    (json.dumps({"format": "onefit-family", "version": 1, "config": {"widht": [1]}, "space": [],
                 "example_inputs": [], "weights": {"file": "w.safetensors", "sha256": "0"},
                 "source": {"factory": "onefit.zoo:mlp"}}).encode(), "config is not an ElasticConfig"),
    (json.dumps({"format": "onefit-family", "version": 1, "config": {}, "space": [],
                 "example_inputs": [{"shape": [1], "dtype": "load"}], "weights": {"file": "w.safetensors", "sha256": "0"},
                 "source": {"factory": "onefit.zoo:mlp"}}).encode(), "an example input must be"),
])
def test_a_manifest_of_the_wrong_shape_is_a_checkpoint_error(tmp_path, content, message):
    (tmp_path / "family.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        onefit.load(tmp_path)


def test_a_family_of_a_zoo_model_saves_and_loads_as_the_readme_shows(tmp_path):
    model = onefit.zoo.resnet(widths=(8, 16), blocks=(1, 1))
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),))
    family.save(tmp_path / "fam")
    assert onefit.load(tmp_path / "fam").space == family.space
