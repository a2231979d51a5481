"""A run folder's record of its stages: what is done, with which config, and what to redo.

``run.json`` holds the config (as validated JSON) and, per stage, the digest of the config it
started with and, once finished, its time and one-line summary. A stage's digest covers its own
sections and every earlier stage's, so a change to ``[train]`` invalidates train, search,
export and report but not pretraining. A stage that starts with another digest than the one its
outputs were made with removes them first; every write of ``run.json`` is atomic, so a run
killed at any point is continued where it stopped.

>>> changed_keys({"train": {"epochs": 2}, "seed": 0}, {"train": {"epochs": 3}, "seed": 0})
['train.epochs: 2 -> 3']
>>> first_stage_using(["train.epochs"])
'train'
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from onefit.checkpoint import atomic_write
from onefit.run.config import STAGES

FORMAT, VERSION = "onefit-run", 1
RECORD = "run.json"

# The config sections each stage reads (besides the earlier stages' ones).
SECTIONS = {
    "inspect": ("model", "data", "elastic"),
    "pretrain": ("seed", "task", "pretrain"),
    "train": ("train",),
    "search": ("search",),
    "export": ("export", "targets"),
    "report": (),
}
# What each stage writes; removed when the stage is redone.
OUTPUTS = {
    "inspect": ("coverage.json",),
    "pretrain": ("pretrain",),
    "train": ("family",),
    "search": ("study.db", "front.json", "front.csv"),
    "export": ("models",),
    "report": ("report.html", "report.md", "report.json"),
}


class RunError(RuntimeError):
    """A run folder that cannot be continued as asked; the message says what to do."""


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): data}


def changed_keys(old: dict, new: dict) -> list[str]:
    """The dotted keys whose values differ, as ``key: old -> new``."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def first_stage_using(keys) -> str | None:
    """The earliest stage that reads any of the dotted ``keys``."""
    sections = {k.split(".")[0].split(":")[0] for k in keys}
    return next((s for s in STAGES if sections & set(SECTIONS[s])), None)


def stage_digest(config: dict, stage: str) -> str:
    upto = STAGES[:STAGES.index(stage) + 1]
    used = {key: config.get(key) for s in upto for key in SECTIONS[s]}
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    """The folder ``path`` of a run of ``config`` (a RunConfig's JSON)."""

    def __init__(self, path: Path, record: dict):
        self.path, self.record = Path(path), record

    @property
    def config(self) -> dict:
        return self.record["config"]

    @classmethod
    def open(cls, path, config: dict, restart_from: str | None = None) -> "RunFolder":
        """Start a new run in ``path``, or continue the one there. A different config is refused
        (with the difference) unless ``restart_from`` names a stage no earlier than the first the
        change affects; that stage and every later one are then redone. A ``restart_from`` stage
        that was stopped midway with the same config (killed) resumes where it stopped."""
        path = Path(path)
        if restart_from is not None and restart_from not in STAGES:
            raise RunError(f"--restart-from: {restart_from!r} is not a stage; choose one of {', '.join(STAGES)}")
        if not (path / RECORD).exists():
            if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
                raise RunError(f"{path} exists and is not a onefit run folder (no {RECORD}); choose another --out")
            folder = cls(path, {"format": FORMAT, "version": VERSION, "config": config, "stages": {},
                                "created": time.strftime("%Y-%m-%d %H:%M:%S")})
            folder.save()
            return folder
        folder = cls.read(path)
        changes = changed_keys(folder.config, config)
        if changes:
            needed = first_stage_using(k.split(":")[0] for k in changes)
            if restart_from is None or STAGES.index(restart_from) > STAGES.index(needed):
                lines = "\n  ".join(changes)
                raise RunError(f"{path} was run with another config; it differs in\n  {lines}\n"
                               f"the first stage this changes is {needed!r}: pass --restart-from {needed} to redo it "
                               f"and every later stage (or another --out for a new run)")
        if changes or restart_from is not None:
            folder.record["config"] = config
            for stage in STAGES[STAGES.index(restart_from):] if restart_from is not None else ():
                if not (stage == restart_from and not changes and folder.unfinished(stage)):
                    folder.record["stages"].pop(stage, None)  # a stage stopped midway resumes instead
            folder.save()
        return folder

    def unfinished(self, stage: str) -> bool:
        """Whether ``stage`` was started with this config and stopped before it finished."""
        entry = self.record["stages"].get(stage, {})
        return "finished" not in entry and entry.get("digest") == stage_digest(self.config, stage)

    @classmethod
    def read(cls, path) -> "RunFolder":
        path = Path(path)
        try:
            record = json.loads((path / RECORD).read_text())
        except FileNotFoundError:
            raise RunError(f"{path} is not a run folder made by onefit run: {RECORD} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunError(f"{path / RECORD} is damaged: {err}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("config"), dict):
            raise RunError(f"{path / RECORD} is not a onefit run record")
        record.setdefault("stages", {})
        return cls(path, record)

    def save(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / RECORD, json.dumps(self.record, indent=1).encode())
        except OSError as err:
            raise RunError(f"cannot write the run folder {self.path}: {err.strerror or err}; choose another --out "
                           "or free the disk, then run again") from err

    def done(self, stage: str) -> bool:
        entry = self.record["stages"].get(stage, {})
        return "finished" in entry and entry.get("digest") == stage_digest(self.config, stage)

    def start(self, stage: str) -> None:
        """Before ``stage`` runs: outputs made with another config are removed, then the digest is recorded."""
        digest = stage_digest(self.config, stage)
        entry = self.record["stages"].get(stage, {})
        if entry.get("digest") != digest:
            for name in OUTPUTS[stage]:
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            self.record["stages"][stage] = {"digest": digest}
            self.save()

    def finish(self, stage: str, seconds: float, summary: str, **extra) -> None:
        self.record["stages"][stage] = {"digest": stage_digest(self.config, stage), "finished": time.strftime(
            "%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1), "summary": summary, **extra}
        self.save()

    def summary(self, stage: str) -> str:
        return self.record["stages"].get(stage, {}).get("summary", "")
