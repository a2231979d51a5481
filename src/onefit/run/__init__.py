"""``onefit run CONFIG``: the whole job from one config, stage by stage, resumable.

inspect -> pretrain -> train -> search -> export -> report, each recorded in the run folder's
``run.json`` when done (``onefit.run.folder``). Started again on the same folder, a run skips
what is done and continues the stage it was stopped in; a folder run with another config is
refused with the difference unless ``restart_from`` names the stage to redo from.

Under ``torchrun`` every rank takes part in the training stages (pretrain, train), data
parallel (``onefit.train.distributed``); rank 0 alone keeps the run folder, and runs the later
stages by itself once the others have left.

>>> from onefit.run.config import STAGES
>>> STAGES
('inspect', 'pretrain', 'train', 'search', 'export', 'report')
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from onefit.run.config import STAGES, ConfigError, RunConfig, load_config, parse_config
from onefit.run.folder import RunError, RunFolder
from onefit.run.job import Job, JobError


TRAINING = ("pretrain", "train")  # the stages every rank of a torchrun job takes part in


class StageError(RuntimeError):
    """A stage that failed; the message names the stage, and the run resumes there once fixed."""


def run(config: RunConfig, out: str | Path, *, restart_from: str | None = None, only: str | None = None,
        trusted: bool = True, from_folder: bool = False, progress: bool = True, echo: Callable[[str], None] = print,
        source_text: str | None = None, **options) -> RunFolder | None:
    """Run every stage of ``config`` not yet done in the folder ``out`` (or just ``only``, which
    then is redone even when done). ``source_text``: the config file as written, kept as
    ``config.toml`` beside the record. ``from_folder``: ``config`` was read back from the run
    folder, so code it names is imported only when ``trusted`` (``onefit.trust``). ``options``: how
    to run, not what (``Job``'s: ``storage``, ``study``, ``share``, ``claim_timeout_s`` for the
    search). Under ``torchrun``, ranks other than 0 return None."""
    from onefit.run.stages import STAGE_FUNCTIONS
    from onefit.train import distributed

    group = distributed.init_from_env() or distributed.current()
    if group is not None and not group.leader:
        return _follow(config, out, trusted=trusted, from_folder=from_folder)
    folder = RunFolder.open(out, config.to_json(), restart_from=only or restart_from)
    toml = folder.path / "config.toml"
    if source_text is not None and (not toml.exists() or toml.read_text() != source_text):
        from onefit.checkpoint import atomic_write

        atomic_write(toml, source_text.encode())
    _write_data_record(folder, config)
    job = Job(config, trusted=trusted, from_folder=from_folder, **options)
    selected = STAGES if only is None else (only,)
    todo = [s for s in selected if only is not None or not folder.done(s)]
    for stage in selected:
        if only is None and folder.done(stage):
            echo(f"{stage}: done before ({folder.summary(stage)})")
            continue
        missing = [s for s in STAGES[:STAGES.index(stage)] if not folder.done(s)]
        if missing:
            raise StageError(f"{stage}: the earlier stage(s) {', '.join(missing)} are not done; run onefit run first")
        folder.start(stage)
        if group is not None and stage in TRAINING:
            distributed.broadcast_object(stage)  # the other ranks train with this one
        elif group is not None and not any(s in TRAINING for s in todo[todo.index(stage):]):
            group = _release()  # rank 0 runs the rest alone
        parallel = {"processes": group.world} if group is not None and stage in TRAINING else {}
        echo(f"{stage} ..." + (f" (data parallel over {group.world} processes)" if parallel else ""))
        started = time.perf_counter()
        try:
            result = STAGE_FUNCTIONS[stage](job, folder, progress)
        except (JobError, ConfigError, RunError):
            raise
        except OSError as err:
            raise StageError(f"{stage}: cannot write to the run folder {folder.path}: {err.strerror or err} "
                             f"({err.filename or ''}); fix it and run again to continue from here") from err
        except Exception as err:
            raise StageError(f"{stage}: {type(err).__name__}: {err}") from err
        summary = result.pop("summary")
        folder.finish(stage, time.perf_counter() - started, summary, **result, **parallel)
        echo(f"{stage}: {summary} ({time.perf_counter() - started:.1f} s)")
    if group is not None:
        _release()
    later = [s for s in STAGES if only is not None and STAGES.index(s) > STAGES.index(only) and not folder.done(s)]
    if later:
        echo(f"to redo with it: {', '.join(later)} (onefit {' then onefit '.join(f'{s} {folder.path}' for s in later)})")
    return folder


def _release() -> None:
    """Rank 0 tells the other ranks that no training stage is left; every rank leaves the group."""
    from onefit.train import distributed

    distributed.broadcast_object(None)
    distributed.shutdown()


def _follow(config: RunConfig, out: str | Path, *, trusted: bool, from_folder: bool) -> RunFolder | None:
    """A rank other than 0: train in each training stage rank 0 names, writing nothing."""
    from onefit.run.stages import STAGE_FUNCTIONS
    from onefit.train import distributed

    job = Job(config, trusted=trusted, from_folder=from_folder)
    while (stage := distributed.broadcast_object(None)) is not None:
        STAGE_FUNCTIONS[stage](job, RunFolder.read(out), False)
    distributed.shutdown()
    return None


def _write_data_record(folder: RunFolder, config: RunConfig) -> None:
    """``config.json``: the data the run used, as ``onefit export`` / ``search`` with flags read it."""
    import json

    from onefit.checkpoint import atomic_write

    data = config.data
    spec = f"onefit.data:{data.bundled}" if data.bundled else data.factory
    kwargs = {"seed": config.seed, **data.kwargs} if data.bundled else data.kwargs
    text = json.dumps({"data": spec, "data_kwargs": kwargs, "seed": config.seed}, indent=1)
    path = folder.path / "config.json"
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text.encode())


def run_folder_job(path: str | Path) -> tuple[RunFolder, RunConfig]:
    """The folder and config of a run folder made by ``onefit run`` (for the stages alone)."""
    folder = RunFolder.read(path)
    return folder, parse_config(folder.config, str(Path(path) / "run.json"))


__all__ = ["STAGES", "ConfigError", "Job", "JobError", "RunConfig", "RunError", "RunFolder", "StageError",
           "load_config", "parse_config", "run", "run_folder_job"]
