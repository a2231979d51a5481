"""The export stage: every chosen sub-model to verified ONNX files, measured where it will run.

Chosen: the points of the search's front (at most ``export.max_models``, spread from the
smallest to the largest) and the best sub-model (least validation error) under each of
``export.budgets``. Each is exported in fp32 and, where asked and possible, int8; each file is
checked for parity on inputs other than the example, scored with the task's metric on the test
data, and timed on every target runtime at every batch size. ``models/NAME.json`` is written
once a model's files are done, so a killed export goes on with the next model;
``models/manifest.json`` lists them all, and the measured latencies are stored in the study
(its user attribute ``onefit:measured``) beside the trials they measure.

>>> [tuple(x.shape) for x in batch_of((torch.zeros(1, 3), torch.ones(1, 5)), 4)]  # a timed batch: the example, repeated
[(4, 3), (4, 5)]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from onefit.checkpoint import atomic_write
from onefit.progress import progress_bar
from onefit.report.tables import spread
from onefit.run.job import Job, JobError


def chosen(job: Job, folder) -> list[dict]:
    """``[{"name", "arch", "chosen_for": [...], "validation": metrics}]`` in the order of params."""
    from onefit.search import Front
    from onefit.search.base import Trial

    data = json.loads((folder.path / "front.json").read_text())
    front = [Trial.from_json(t) for t in data["front"]]
    section = job.config.export
    picks: dict[str, dict] = {}

    def add(trial, why: str) -> None:
        key = json.dumps(trial.arch, sort_keys=True)
        picks.setdefault(key, {"arch": dict(trial.arch), "chosen_for": [], "validation": dict(trial.metrics)})
        picks[key]["chosen_for"].append(why)

    ordered = sorted(front, key=lambda t: (t.metrics.get("params", 0), t.metrics.get("error", 0)))
    if section.front:
        for trial in spread(ordered, section.max_models):
            add(trial, "front")
    for i, budget in enumerate(section.budgets):
        try:
            best = Front(front, data["objectives"]).best("error", **budget)
        except ValueError as err:
            raise JobError(f"export.budgets[{i}] {budget}: {err}") from None
        add(best, " ".join(f"{k}<={v:g}" for k, v in budget.items()))
    if not picks:
        raise JobError("export: nothing to export; set export.front = true or give export.budgets")
    rows = sorted(picks.values(), key=lambda p: p["validation"].get("params", 0))
    return [{"name": f"m{i:02d}", **row} for i, row in enumerate(rows)]


def batch_of(examples: tuple, size: int) -> tuple:
    return tuple(x.repeat(size, *[1] * (x.dim() - 1)) for x in examples)


def _latencies(job: Job, target, examples: tuple, backend: str, precision: str) -> list[dict]:
    from onefit.cost.latency import measure_latency

    section = job.config.targets
    found = []
    for size in section.batch_sizes:
        latency = measure_latency(target, batch_of(examples, size), backend=backend, threads=section.threads,
                                  repeats=section.repeats, warmup=max(2, section.repeats // 5))
        found.append({"runtime": backend, "precision": precision, **latency.to_json()})
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has_bits(family) -> bool:
    return any(d.name.startswith("bits:") for d in family.space)


def export_one(job: Job, family, pick: dict, models: Path) -> dict:
    """Export, verify, score and time one chosen sub-model; returns its manifest entry."""
    from onefit.cost import costs
    from onefit.export import ExportError, export
    from onefit.train.bn import recalibrate_bn

    arch, targets = pick["arch"], job.config.targets
    module = recalibrate_bn(family.extract(arch), job.splits.calibration, task=job.task)
    examples = job.example_inputs
    entry = {**pick, **costs(family, arch), "files": [], "latency": [], "left_out": []}
    for backend in (r for r in targets.runtimes if r != "onnxruntime"):
        entry["latency"] += _latencies(job, module, examples, backend, "fp32")
    if "onnxruntime" not in targets.runtimes:
        return entry
    for precision in targets.precisions:
        path = models / f"{pick['name']}-{precision}.onnx"
        try:
            report = export(module, path, examples, quantize="int8" if precision == "int8" else None,
                            calibration=job.splits.calibration, eval_data=job.splits.test, task=job.task,
                            bits=family.bits(arch) if precision == "int8" and _has_bits(family) else None)
        except (ExportError, ValueError) as err:
            if precision == "fp32":
                raise JobError(f"export: {pick['name']} ({arch}) failed: {err}") from err
            entry["left_out"].append({"file": path.name, "why": str(err)})
            continue
        entry["files"].append({"file": path.name, "precision": precision, "bytes": report.bytes,
                               "sha256": _sha256(path), "method": report.method, "exporter": report.exporter,
                               "max_abs_error": report.max_abs_error, "cosine": report.cosine,
                               "parity_inputs": report.parity_inputs, "metric": report.accuracy})
        entry["latency"] += _latencies(job, str(path), examples, "onnxruntime", precision)
    return entry


def export_models(job: Job, folder, family, progress: bool = True) -> list[dict]:
    models = folder.path / "models"
    models.mkdir(parents=True, exist_ok=True)
    picks = chosen(job, folder)
    entries = []
    with progress_bar(progress) as bar:
        task = bar.add_task("export", total=len(picks))
        for pick in picks:
            done = models / f"{pick['name']}.json"
            if done.exists() and json.loads(done.read_text()).get("arch") == pick["arch"]:
                entries.append(json.loads(done.read_text()))  # exported before the run was stopped
            else:
                entries.append(export_one(job, family, pick, models))
                atomic_write(done, json.dumps(entries[-1], indent=1).encode())
            bar.update(task, advance=1)
    atomic_write(models / "manifest.json", json.dumps({"models": entries, "metric": job.task.metric_name},
                                                      indent=1).encode())
    _record_in_study(folder, entries)
    return entries


def _record_in_study(folder, entries: list[dict]) -> None:
    """The measured latencies of the exported sub-models, as the study's ``onefit:measured`` attribute."""
    import optuna

    from onefit.search.study import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="onefit", storage=storage_url(folder.path / "study.db"))
    study.set_user_attr("onefit:measured", [{"arch": e["arch"], "latency": e["latency"]} for e in entries])
