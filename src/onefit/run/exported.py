"""The export stage: every chosen sub-model to verified files for each target runtime (ONNX
Runtime, OpenVINO: ``onefit.runtimes``), measured where it will run.

Chosen: the points of the search's front (at most ``export.max_models``, spread from the
smallest to the largest) and the best sub-model (least validation error) under each of
``export.budgets``. Each is built in fp32 and, where asked and possible, int8 (7- or 8-bit
weights as this CPU allows: ``onefit.runtimes.cpu``); each file is
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
from onefit.dims.bits import SHARED
from onefit.progress import progress_bar
from onefit.report.tables import spread
from onefit.run.job import Job, JobError


def chosen(job: Job, folder, family) -> list[dict]:
    """``[{"name", "arch", "chosen_for": [...], "validation": metrics}]`` in the order of params.
    Archs that build the same files (a shared bits dimension at 8 and at 32: ``precision_arch``)
    are one model, under its fp32 arch, with the validation metrics of the first that chose it."""
    from onefit.search import Front
    from onefit.search.base import Trial

    data = json.loads((folder.path / "front.json").read_text())
    front = [Trial.from_json(t) for t in data["front"]]
    section = job.config.export
    picks: dict[str, dict] = {}

    def add(trial, why: str) -> None:
        arch = precision_arch(family, dict(trial.arch), "fp32")
        key = json.dumps(arch, sort_keys=True)
        picks.setdefault(key, {"arch": arch, "chosen_for": [], "validation": dict(trial.metrics)})
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


def _module_latencies(job: Job, module, backend: str) -> list[dict]:
    from onefit.cost.latency import measure_latency

    section = job.config.targets
    return [{"runtime": backend, "precision": "fp32",
             **measure_latency(module, batch_of(job.example_inputs, size), backend=backend, threads=section.threads,
                               repeats=section.repeats, warmup=max(2, section.repeats // 5)).to_json()}
            for size in section.batch_sizes]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has_bits(family) -> bool:
    return any(d.kind == "bits" for d in family.space)


MODULE_RUNTIMES = ("eager", "compile")  # timed on the PyTorch module itself; the others build files


def export_one(job: Job, family, pick: dict, models: Path) -> dict:
    """Build, verify, score and time one chosen sub-model on every target runtime and precision."""
    from onefit.cost import costs
    from onefit.export import ExportError
    from onefit.runtimes import runtime
    from onefit.train.bn import recalibrate_bn

    arch, targets = pick["arch"], job.config.targets
    modules: dict[str, torch.nn.Module] = {}

    def sub_model(precision: str = "fp32") -> tuple[dict, torch.nn.Module]:
        at = precision_arch(family, arch, precision)
        key = json.dumps(at, sort_keys=True)
        if key not in modules:
            modules[key] = recalibrate_bn(family.extract(at), job.splits.calibration, task=job.task)
        return at, modules[key]

    module = sub_model()[1]
    examples = job.example_inputs
    threads = targets.threads or torch.get_num_threads()
    reduce_range, _ = int8_range(family)
    entry = {**pick, **costs(family, arch), "files": [], "latency": [], "left_out": []}
    for name in targets.runtimes:
        if name == "streaming":  # the sub-model one frame at a time: per-step cost and latency
            from onefit.streaming import continual

            stream = continual(module, examples[0][:1])
            entry["streaming"] = stream.costs()
            entry["latency"].append({"runtime": "streaming", "precision": "fp32",
                                     **stream.step_latency(repeats=targets.repeats, threads=threads).to_json()})
            continue
        if name in MODULE_RUNTIMES:
            entry["latency"] += _module_latencies(job, module, name)
            continue
        target_runtime = runtime(name)
        for precision in targets.precisions:
            stem = models / f"{pick['name']}-{name}-{precision}"
            at, built_from = sub_model(precision)
            try:
                built = target_runtime.build(built_from, stem, precision, examples=examples,
                                             calibration=job.splits.calibration, eval_data=job.splits.test,
                                             task=job.task, reduce_range=reduce_range,
                                             bits=family.bits(at) if _has_bits(family) else None)
            except (ExportError, ValueError) as err:
                if precision == "fp32":
                    raise JobError(f"export: {pick['name']} on {name} ({arch}) failed: {err}") from err
                entry["left_out"].append({"file": stem.name, "runtime": name, "precision": precision, "why": str(err)})
                continue
            entry["files"].append({"file": built.path.name, "runtime": name, "precision": precision,
                                   **({"bits": at[SHARED]} if at is not arch else {}),
                                   "bytes": sum(p.stat().st_size for p in built.files),
                                   "sha256": _sha256(built.path), "method": built.method,
                                   "max_abs_error": built.max_abs_error, "cosine": built.cosine,
                                   "parity_inputs": built.parity_inputs, "metric": built.metric})
            for size in targets.batch_sizes:
                latency = target_runtime.latency(built.path, batch_of(examples, size), threads=threads,
                                                 repeats=targets.repeats, warmup=max(2, targets.repeats // 5))
                entry["latency"].append({"runtime": name, "precision": precision, **latency.to_json()})
    entry["faster"] = faster_precision(entry["latency"])
    return entry


def int8_range(family, flags: set[str] | None = None) -> tuple[bool, str]:
    """``(reduce_range, why)`` of the int8 files of ``family``'s sub-models: ONNX Runtime's reduced
    weight range where the family trained its 8-bit weights on it, else the range this CPU (or one
    with ``flags``) runs safely, and a word when that re-rounds weights the family trained at 8 bits.

    >>> import torch, onefit
    >>> config = onefit.ElasticConfig(width=(1.0,), depth=False, bits=(8,), bits_shared=True)
    >>> family = onefit.elasticize(onefit.zoo.mlp(hidden=8, layers=1), (torch.randn(1, 1, 8, 8),), config)
    >>> int8_range(family, {"avx2"})[1].split(";")[1]
    ' the family trained its 8-bit weights on the full range, so these files round them again (elastic.reduce_range = true trains them as they run)'
    """
    from onefit.runtimes.cpu import int8_weights

    if family.config.reduce_range:
        return True, ("8-bit weights on ONNX Runtime's reduced range (-64..64): the family trained them on it "
                      "(elastic.reduce_range)")
    reduce_range, why = int8_weights(flags)
    if reduce_range and 8 in family.config.weight_bits():
        why += ("; the family trained its 8-bit weights on the full range, so these files round them again "
                "(elastic.reduce_range = true trains them as they run)")
    return reduce_range, why


def precision_arch(family, arch: dict, precision: str) -> dict:
    """The sub-model a file of ``precision`` is built from: ``arch`` itself, or, for a family with one
    shared bits dimension offering 8 bits (``ElasticConfig(bits=(8,), activation_bits=8,
    bits_shared=True)``), ``arch`` at 8 bits for int8 (the family's quantization-aware trained
    sub-model, its trained activation ranges given to the runtime) and at 32 for fp32.

    >>> import torch, onefit
    >>> config = onefit.ElasticConfig(width=(1.0,), depth=False, bits=(8,), bits_shared=True)
    >>> family = onefit.elasticize(onefit.zoo.mlp(hidden=8, layers=1), (torch.randn(1, 1, 8, 8),), config)
    >>> [precision_arch(family, family.space.min(), p)["bits"] for p in ("fp32", "int8")]
    [32, 8]
    """
    dims = family.space.names
    if SHARED in dims and 8 in family.space[SHARED].choices:
        return {**arch, SHARED: 8 if precision == "int8" else 32}
    return arch


def faster_precision(latencies: list[dict]) -> dict[str, str]:
    """For each runtime and batch timed in both precisions, the one to ship: the faster.

    >>> faster_precision([{"runtime": "onnxruntime", "precision": p, "batch": 64, "median_ms": ms}
    ...                   for p, ms in (("fp32", 4.9), ("int8", 8.0))])
    {'onnxruntime b=64': 'fp32'}
    """
    timing = {(l["runtime"], l["precision"], l["batch"]): l["median_ms"] for l in latencies}
    return {f"{r} b={b}": "int8" if ms < timing[(r, "fp32", b)] else "fp32"
            for (r, p, b), ms in timing.items() if p == "int8" and (r, "fp32", b) in timing}


def export_models(job: Job, folder, family, progress: bool = True) -> list[dict]:
    models = folder.path / "models"
    models.mkdir(parents=True, exist_ok=True)
    picks = chosen(job, folder, family)
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
    from onefit.runtimes.cpu import describe

    reduce_range, why = int8_range(family)
    cpu = {**describe(), "int8_reduce_range": reduce_range, "int8_weights": why}
    atomic_write(models / "manifest.json", json.dumps({"models": entries, "metric": job.task.metric_name,
                                                       "cpu": cpu}, indent=1).encode())
    _record_in_study(folder, entries)
    return entries


def _record_in_study(folder, entries: list[dict]) -> None:
    """The measured latencies of the exported sub-models, as the study's ``onefit:measured`` attribute."""
    import optuna

    from onefit.search.study import storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="onefit", storage=storage_url(folder.path / "study.db"))
    study.set_user_attr("onefit:measured", [{"arch": e["arch"], "latency": e["latency"]} for e in entries])
