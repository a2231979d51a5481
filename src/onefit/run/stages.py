"""The stages of ``onefit run``, each a function of the job and the run folder that returns its
one-line summary (and figures for the report). Each stage writes its outputs atomically and picks
up what an earlier attempt left: pretraining and training resume at the last finished epoch
(``onefit.train``'s checkpoints), the search at the last recorded trial (its study), the export
at the last exported model. ``onefit.run.run`` calls them in order.

>>> STAGE_FUNCTIONS.keys() == set(STAGES)
True
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from onefit.checkpoint import atomic_write
from onefit.run.config import STAGES
from onefit.run.folder import RunFolder
from onefit.run.job import Job, JobError


def _write_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=1).encode())


def inspect_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    """What the config's elastic settings can shrink in the model, and a check of the data."""
    from onefit.inspect import inspect

    _check_runtimes(job)
    model = job.build_model()
    job.check_data(model)
    if "streaming" in job.config.targets.runtimes:
        _check_streams(job, model)
    try:
        coverage = inspect(model, job.example_inputs, job.config.elastic.elastic_config())
    except ValueError as err:
        raise JobError(f"elastic: {err}") from err
    _write_json(folder.path / "coverage.json", coverage.to_json())
    return {"summary": f"{coverage.space_size:,} sub-models over {len(coverage.dimensions)} dimensions, "
                       f"{coverage.params_min:,} to {coverage.params_max:,} params; {coverage.coverage:.1%} of the "
                       f"parameters are in elastic layers"}


def _check_runtimes(job: Job) -> None:
    """Every target runtime runs here, checked before any training (``targets.runtimes``)."""
    from onefit.runtimes import RUNTIMES, RuntimeMissing, runtime

    for name in job.config.targets.runtimes:
        if name in RUNTIMES:
            try:
                runtime(name)
            except RuntimeMissing as err:
                raise JobError(f"targets.runtimes: {err}") from None


def _check_streams(job: Job, model) -> None:
    """A streaming target needs a model that runs one frame at a time: checked before training."""
    import copy

    from onefit.streaming import NotStreamable, continual

    try:
        continual(copy.deepcopy(model), job.example_inputs[0][:1])
    except (NotStreamable, ValueError) as err:
        raise JobError(f"targets.runtimes: 'streaming': {err}") from None


def _test_metric(job: Job, module) -> float:
    from onefit.tasks import evaluate
    from onefit.train.bn import recalibrate_bn

    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        recalibrate_bn(module, job.splits.calibration, task=job.task)
    return evaluate(module, job.splits.test, job.task)


def pretrain_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    """Plain training of the full model, resumable per epoch (a family with only its largest arch trained)."""
    from onefit.train import train
    from onefit.train.plain import PlainConfig, PlainRecipe

    section = job.config.pretrain
    if section.epochs == 0:
        return {"summary": "skipped: pretrain.epochs = 0 (the model comes trained)"}
    family = job.family()
    optimizer = torch.optim.Adam(family.parameters(), lr=section.lr)
    train(family, job.splits.train, PlainRecipe(PlainConfig(seed=job.config.seed)), epochs=section.epochs,
          task=job.task, optimizer=optimizer, checkpoint=folder.path / "pretrain", progress=progress)
    metric = _test_metric(job, family.extract(family.space.max()))
    return {"summary": f"the full model: {metric:.2f} test {job.task.metric_name}", "metric": metric}


def _recipe(job: Job):
    from onefit.train import RECIPES

    section = job.config.train
    cls = RECIPES[section.recipe]
    if cls.trains != "family":
        families = sorted(n for n, c in RECIPES.items() if c.trains == "family")
        raise JobError(f"train.recipe: {section.recipe!r} trains a {cls.trains}, not a family; onefit run trains "
                       f"families with one of {families}")
    config = {"seed": job.config.seed, **section.config}
    try:
        return cls.from_description({"recipe": section.recipe, "config": config})
    except (TypeError, ValueError) as err:
        raise JobError(f"train.config: {err}") from None


def starting_family(job: Job, folder: RunFolder):
    """The family before its own training: pretrained weights if any, channels sorted, layers
    ranked by importance when the config asks."""
    from onefit.importance import ActivationImportance, L1Importance, TaylorImportance, sort_
    from onefit.saved import restore_

    family = job.family()
    if job.config.pretrain.epochs:
        restore_(family, folder.path / "pretrain")
        family.history = []
    if job.config.elastic.sort:
        kind = {"l1": None, "activation": ActivationImportance, "taylor": TaylorImportance}[job.config.elastic.importance]
        sort_(family, L1Importance() if kind is None else kind(job.splits.calibration, job.task))
    if job.config.elastic.order_depth:
        from onefit.importance import order_depth_

        try:
            order_depth_(family, job.splits.calibration, job.task)
        except ValueError as err:
            raise JobError(f"elastic.order_depth: {err}") from None
    return family


def trained_family(job: Job, folder: RunFolder):
    from onefit.saved import restore_

    return restore_(job.family(), folder.path / "family")


def train_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    """The family's training with the config's recipe, resumable per epoch."""
    from onefit.train import train

    recipe = _recipe(job)
    family = starting_family(job, folder)
    teacher = family.extract(family.space.max()).eval().requires_grad_(False)  # for recipes that distil
    optimizer = recipe.prepare(family) or torch.optim.Adam(family.parameters(), lr=job.config.train.lr)
    train(family, job.splits.train, recipe, epochs=job.config.train.epochs, task=job.task, optimizer=optimizer,
          teacher=teacher, checkpoint=folder.path / "family", progress=progress)
    largest = _test_metric(job, family.extract(family.space.max()))
    smallest = _test_metric(job, family.extract(family.space.min()))
    return {"summary": f"test {job.task.metric_name}: largest sub-model {largest:.2f}, smallest {smallest:.2f}",
            "largest": largest, "smallest": smallest}


def search_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    """The search over the trained family on validation data, resumable per trial (its study)."""
    from onefit.search import SEARCHERS, ProblemError, family_problem, search
    from onefit.search.study import hide_password

    section = job.config.search
    family = trained_family(job, folder)
    try:
        problem = family_problem(family, job.splits.validation, calibration=job.splits.calibration,
                                 objectives=section.objectives, constraints=section.constraints, task=job.task,
                                 latency="measure" if "latency_ms" in section.objectives else None)
    except ProblemError as err:
        raise JobError(f"search: {err}") from None
    seed = job.config.seed if section.seed is None else section.seed
    front = search(problem, SEARCHERS[section.searcher](seed=seed), budget=section.budget,
                   storage=job.storage or folder.path / "study.db", study_name=job.study, progress=progress,
                   share=job.share, claim_timeout_s=job.claim_timeout_s)
    front.save_json(folder.path / "front.json")
    front.save_csv(folder.path / "front.csv")
    shared = f"; the study shared by workers at {hide_password(str(job.storage))}" if job.share else ""
    return {"summary": f"{len(front)} sub-models on the front of {len(front.evaluated)} evaluated "
                       f"({', '.join(section.objectives)}; validation data{shared})"}


def export_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    from onefit.run.exported import export_models

    models = export_models(job, folder, trained_family(job, folder), progress)
    files = sum(len(m["files"]) for m in models)
    left = sum(len(m["left_out"]) for m in models)
    return {"summary": f"{len(models)} sub-models exported as {files} verified files"
                       + (f"; {left} left out (see the report)" if left else "")}


def report_stage(job: Job, folder: RunFolder, progress: bool) -> dict:
    from onefit.run.report import write_report

    paths = write_report(folder, trained_family(job, folder), job.task)
    return {"summary": f"wrote {', '.join(p.name for p in paths)}"}


STAGE_FUNCTIONS = {"inspect": inspect_stage, "pretrain": pretrain_stage, "train": train_stage,
                   "search": search_stage, "export": export_stage, "report": report_stage}
