"""Family checkpoints: safetensors weights plus a JSON manifest. Nothing is ever unpickled.

A folder holds ``family.json`` and the tensor files it names, each named by its content hash.
Saving writes the tensor files first and the manifest last with an atomic rename, then removes
files no manifest names, so a save killed at any point leaves the previous checkpoint whole.
The manifest carries the sha256 of its own content, checked before anything in it is used: it
catches a damaged or hand-edited manifest, not a deliberate forgery (anyone can recompute it);
what keeps a folder from running code is that it can only name onefit's own factories.
A recorded factory is imported only when it is one of onefit's own (``onefit.zoo:NAME``) or the
caller says ``trust_code=True``: opening a folder never runs code the folder names
(``onefit.trust``). Rebuilding a family from a folder is ``onefit.saved.load``.

>>> import json, tempfile, torch, onefit
>>> folder = Path(tempfile.mkdtemp())
>>> onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),)).save(folder)
>>> manifest = json.loads((folder / MANIFEST).read_text())
>>> manifest["version"], manifest["sha256"] == _manifest_digest(manifest)
(2, True)
>>> manifest["source"]["factory"] = "os:system"  # an edit the hash no longer matches
>>> _ = (folder / MANIFEST).write_text(json.dumps(manifest))
>>> read_manifest(folder)
Traceback (most recent call last):
...
onefit.checkpoint.CheckpointError: ... content does not match its recorded sha256; the manifest was changed
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from onefit.elastic.ties import aliases

FORMAT = "onefit-family"
VERSION = 2  # 2: the manifest records its own sha256; version 1 folders (no hash) still load
VERSIONS = (1, 2)
MANIFEST = "family.json"


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete, tampered with or for another model."""


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_tensors(directory: Path, stem: str, tensors: dict[str, torch.Tensor]) -> dict:
    data = safetensors.torch.save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:16]}.safetensors"
    if not (directory / name).exists():
        atomic_write(directory / name, data)
    return {"file": name, "sha256": digest}


def read_tensors(directory: Path, entry: dict) -> dict[str, torch.Tensor]:
    path = directory / entry["file"]
    if not path.exists():
        raise CheckpointError(f"{directory}: {entry['file']} is missing; the checkpoint is incomplete")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: content does not match its recorded sha256; the file was changed")
    return safetensors.torch.load(data)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_family(family, directory, optimizer: torch.optim.Optimizer | None = None, progress: dict | None = None) -> Path:
    """Save ``family`` (and, for resuming training, ``optimizer`` and ``progress``) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for scratch in directory.glob(".*.*"):  # left by a save that was killed mid-write
        scratch.unlink()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **family.describe(),
        "example_inputs": [{"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}
                           for x in family.example_inputs],
        "history": family.history,
        "space_history": getattr(family, "space_history", []),
        "depth_order": getattr(family, "depth_order", {}),
        "latency_models": {k: m.to_json() for k, m in family.latency_models.items()},
    }
    tied = aliases(family.module)  # a tensor several layers hold is written once, under its first name
    manifest["weights"] = _write_tensors(directory, "weights",
                                         {k: v for k, v in family.module.state_dict().items() if k not in tied})
    if tied:
        manifest["tied"] = tied
    if optimizer is not None:
        tensors, meta = _optimizer_tensors(optimizer)
        manifest["optimizer"] = {**_write_tensors(directory, "optimizer", tensors), **meta}
        manifest["progress"] = progress or {}
    manifest["sha256"] = _manifest_digest(json.loads(json.dumps(manifest)))  # as it will read back
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    named = {manifest["weights"]["file"], manifest.get("optimizer", {}).get("file")}
    for stale in directory.glob("*.safetensors"):
        if stale.name not in named:
            stale.unlink()
    return directory


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content without its own ``sha256`` entry, in canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# Entries every manifest has, and the JSON type each must be.
_SHAPE = {"format": str, "version": int, "config": dict, "space": list, "example_inputs": list, "weights": dict}
_OPTIONAL = {"source": dict, "history": list, "space_history": list, "depth_order": dict, "latency_models": dict,
             "optimizer": dict}  # None when absent


def read_manifest(directory) -> dict:
    """The checked manifest of a family folder: its hash, its shape, its format and version."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise CheckpointError(f"{directory} is not a onefit family folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the checkpoint is "
                              "damaged") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from err
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path} holds a JSON {type(manifest).__name__}, not the object of a family manifest")
    if manifest.get("format") != FORMAT or type(manifest.get("version")) is not int or manifest["version"] not in VERSIONS:
        raise CheckpointError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('version')} is not {FORMAT!r} "
            f"(versions {', '.join(map(str, VERSIONS))})"
        )
    if manifest["version"] >= 2 and manifest.get("sha256") != _manifest_digest(manifest):
        raise CheckpointError(f"{path}: content does not match its recorded sha256; the manifest was changed")
    wrong = [f"{key!r} ({'missing' if key not in manifest else type(manifest[key]).__name__})"
             for key, kind in _SHAPE.items() if not isinstance(manifest.get(key), kind)]
    wrong += [f"{key!r} ({type(manifest[key]).__name__})" for key, kind in _OPTIONAL.items()
              if manifest.get(key) is not None and not isinstance(manifest[key], kind)]
    progress = manifest.get("progress")
    if "optimizer" in manifest and not (isinstance(progress, dict) and type(progress.get("epoch")) is int):
        wrong.append("'progress' (needs an int 'epoch' beside the optimizer state)")
    if wrong:
        raise CheckpointError(f"{path}: not a family manifest: {', '.join(wrong)}; expected "
                              + ", ".join(f"{k!r} ({t.__name__})" for k, t in _SHAPE.items()))
    for entry in (manifest["weights"], manifest.get("optimizer", {"file": "", "sha256": ""})):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("file", "sha256")):
            raise CheckpointError(f"{path}: a tensor entry needs 'file' and 'sha256' strings, got {entry!r}")
        if entry["file"] and (Path(entry["file"]).name != entry["file"] or entry["file"].startswith(".")):
            raise CheckpointError(f"{path}: the tensor file {entry['file']!r} is not a plain file name inside "
                                  "the folder")
    return manifest


def build_from_source(source: dict | None, trust_code: bool = False) -> nn.Module:
    """Call the recorded ``module:function`` factory with its recorded keyword arguments: one of
    onefit's own factories, or any other when ``trust_code`` (``onefit.trust``)."""
    from onefit.trust import resolve

    if not source or "factory" not in source:
        raise CheckpointError("this family records no model factory (the model was not built by onefit.zoo); "
                              "pass the original model: load(dir, model=...)")
    kwargs = source.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"the model factory's kwargs must be a JSON object, got {type(kwargs).__name__}")
    try:
        factory = resolve(source["factory"], what="model factory", trusted=trust_code)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return factory(**kwargs)


def example_inputs_of(manifest: dict) -> tuple[torch.Tensor, ...]:
    examples = []
    for x in manifest["example_inputs"]:
        dtype = getattr(torch, str(x.get("dtype")), None) if isinstance(x, dict) else None
        shape = x.get("shape") if isinstance(x, dict) else None
        if not isinstance(dtype, torch.dtype) or not isinstance(shape, list) or not all(
                isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"an example input must be {{'shape': [ints], 'dtype': a torch dtype}}, got {x!r}")
        examples.append(torch.zeros(shape, dtype=dtype))
    return tuple(examples)


def load_training_state(directory, optimizer: torch.optim.Optimizer) -> dict:
    """Restore ``optimizer`` from a checkpoint saved during training; returns its progress record."""
    manifest = read_manifest(directory)
    if "optimizer" not in manifest:
        raise CheckpointError(f"{directory} holds no optimizer state to resume from")
    entry = manifest["optimizer"]
    optimizer.load_state_dict(_optimizer_state(read_tensors(Path(directory), entry), entry))
    return manifest["progress"]
