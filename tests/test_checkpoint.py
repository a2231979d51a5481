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
