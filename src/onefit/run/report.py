"""The report stage: what a run did, gathered from its folder into ``report.html`` (one
self-contained file), ``report.md`` and ``report.json``.

>>> headline([], "accuracy %")
'No model was exported.'
"""

from __future__ import annotations

import json
from pathlib import Path

from onefit.checkpoint import atomic_write
from onefit.report import page, svg
from onefit.report.tables import summarize


def _read(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


def _what_was_run(folder, record: dict, task) -> dict:
    from onefit import __version__
    from onefit.cost.latency import environment

    config = record["config"]
    model = config["model"]
    named = model.get("factory") or (f"onefit.zoo:{model['zoo']}" if model.get("zoo") else model.get("transformers"))
    data = config["data"].get("factory") or f"onefit.data:{config['data']['bundled']}"
    stages = [[name, entry.get("seconds", ""), entry.get("summary", "(not finished)")]
              for name, entry in record["stages"].items()]
    machine = [[k, str(v)] for k, v in {**environment(), "onefit": __version__}.items()]
    return {"title": "What was run", "text": [
        f"Model {named} {json.dumps(model.get('kwargs') or {})}; data {data}; task {config['task']['name']} "
        f"({task.metric_name}); recipe {config['train']['recipe']} for {config['train']['epochs']} epochs; "
        f"search {config['search']['searcher']} over {config['search']['budget']} sub-models on "
        f"{', '.join(config['search']['objectives'])}; seed {config['seed']}. Started {record.get('created', '')}."],
        "tables": [{"id": "stages", "columns": ["stage", "seconds", "result"], "rows": stages},
                   {"id": "machine", "columns": ["machine", ""], "rows": machine}]}


def _latency_columns(models: list[dict]) -> list[tuple]:
    return list(dict.fromkeys((l["runtime"], l["precision"], l["batch"]) for m in models for l in m["latency"]))


def _rows_of(model: dict) -> list[dict]:
    """One row per file, and one per runtime that runs the PyTorch module itself (no file)."""
    files = [{**f, "metric": f.get("metric") or {}} for f in model["files"]]
    with_file = {f["runtime"] for f in files}
    fp32 = next((f["metric"] for f in files if f["precision"] == "fp32" and f["metric"]), {})
    modules = [{"runtime": r, "precision": "fp32", "file": "", "metric": {"onnx": fp32.get("torch", ""), "change": 0}}
               for r in dict.fromkeys(l["runtime"] for l in model["latency"]) if r not in with_file]
    return files + modules


def _models(models: list[dict], family, metric: str) -> dict:
    batches = sorted({l["batch"] for m in models for l in m["latency"]})
    rows = []
    for m in models:
        timing = {(l["runtime"], l["precision"], l["batch"]): l for l in m["latency"]}
        for f in _rows_of(m):
            lat = [timing.get((f["runtime"], f["precision"], b)) for b in batches]
            rows.append([m["name"], ", ".join(m["chosen_for"]), summarize(family, m["arch"]), m["params"], m["macs"],
                         f["runtime"], f["precision"],
                         {"href": f"models/{f['file']}", "text": f["file"]} if f["file"] else "(the PyTorch module)",
                         f.get("bytes", ""), f["metric"].get("onnx", ""), f["metric"].get("change", ""),
                         *[f"{l['median_ms']:.3f} / {l['p90_ms']:.3f}" if l else "" for l in lat],
                         f.get("max_abs_error", ""), f.get("cosine", ""), f.get("sha256", "")[:12]])
    header = ["model", "chosen for", "sub-model (depths, mean width)", "params", "MACs", "runtime", "precision", "file",
              "bytes", f"test {metric}", "change vs torch", *[f"b={b} ms median / p90" for b in batches],
              "parity max abs error", "parity cosine", "sha256"]
    return {"id": "models", "columns": header, "rows": rows}


def _score(model: dict, runtime: str, precision: str) -> float | None:
    """The test metric of what ``runtime`` runs at ``precision``: its file, or the PyTorch module."""
    row = next((r for r in _rows_of(model) if r["runtime"] == runtime and r["precision"] == precision), None)
    value = None if row is None else row["metric"].get("onnx")
    return value if isinstance(value, (int, float)) else None


def measured_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """Which ``(latency, metric)`` points no other point beats on both (faster or as fast, and
    better or as good, one of them strictly).

    >>> measured_front([(1.0, 90.0), (2.0, 95.0), (3.0, 93.0)])
    [True, True, False]
    """
    sign = 1 if higher_is_better else -1

    def beats(a, b) -> bool:
        return a[0] <= b[0] and sign * a[1] >= sign * b[1] and (a[0] < b[0] or sign * a[1] > sign * b[1])

    return [not any(beats(other, p) for other in points) for p in points]


def _points(models: list[dict], runtime: str, precision: str, batch: int) -> list[tuple[float, float, dict]]:
    """``(median ms, test metric, model)`` of every model timed and scored on ``runtime`` at ``precision``, ``batch``."""
    points = [(l["median_ms"], _score(m, runtime, precision), m) for m in models for l in m["latency"]
              if (l["runtime"], l["precision"], l["batch"]) == (runtime, precision, batch)]
    return [p for p in points if p[1] is not None]


def _fronts(models: list[dict], front: dict, evaluated: list[dict], task, family) -> list[dict]:
    metric, figures = task.metric_name, []
    for runtime, batch in dict.fromkeys((r, b) for r, _, b in _latency_columns(models)):
        series = []
        for precision in ("fp32", "int8"):
            points = _points(models, runtime, precision, batch)
            if points:
                series.append({"label": f"{runtime} {precision}", "x": [p[0] for p in points],
                               "y": [p[1] for p in points], "names": [p[2]["name"] for p in points],
                               "front": measured_front([p[:2] for p in points], task.higher_is_better)})
        if series:
            figures.append({"id": f"front-latency-{runtime}-b{batch}", "caption": f"test {metric} against the median "
                            f"latency measured on {runtime} at batch {batch}, one point per exported model and "
                            "precision; the line joins the measured front, a hollow point is beaten by another on both",
                            "svg": svg.scatter_svg(series, f"median latency, ms ({runtime}, batch {batch})",
                                                   f"test {metric}")})
    from onefit.cost import costs

    def params(trial: dict) -> int:  # searched without a params objective: counted here
        return trial["metrics"].get("params") or costs(family, trial["arch"])["params"]

    done = [t for t in evaluated if t.get("values") is not None]
    series = [{"label": f"evaluated ({len(done)})", "x": [params(t) for t in done],
               "y": [t["metrics"]["error"] for t in done], "style": {"c": "0.7", "s": 10}},
              {"label": f"front ({len(front['front'])})", "x": [params(t) for t in front["front"]],
               "y": [t["metrics"]["error"] for t in front["front"]], "style": {"c": "C3"}},
              {"label": "exported", "x": [m["params"] for m in models], "y": [m["validation"]["error"] for m in models],
               "names": [m["name"] for m in models], "style": {"c": "C0", "s": 70, "hollow": True}}]
    figures.append({"id": "front-size", "svg": svg.scatter_svg(series, "parameters", "validation error (searched)",
                                                              xlog=True),
                    "caption": "the search: every evaluated sub-model's validation error against its size"})
    return figures


def _off_the_measured_front(models: list[dict], task) -> list[str]:
    """The exported fp32 models the searched front kept but a measured latency puts behind another."""
    notes = []
    for runtime, batch in dict.fromkeys((l["runtime"], l["batch"]) for m in models for l in m["latency"]
                                        if l["precision"] == "fp32"):
        points = _points(models, runtime, "fp32", batch)
        kept = measured_front([p[:2] for p in points], task.higher_is_better)
        beaten = [p[2]["name"] for p, on in zip(points, kept) if not on]
        if beaten:
            notes.append(f"On {runtime} at batch {batch}, {', '.join(beaten)} {'is' if len(beaten) == 1 else 'are'} "
                         f"off the measured front: another exported model is as fast or faster and as good or better "
                         f"(counts such as MACs do not predict latency).")
    for m in models:
        timing = {(l["runtime"], l["precision"], l["batch"]): l["median_ms"] for l in m["latency"]}
        slower = [(r, b) for (r, p, b), ms in timing.items() if p == "int8" and ms > timing.get((r, "fp32", b), ms)]
        if slower:
            notes.append(f"{m['name']}'s int8 file is slower than its fp32 file on "
                         + ", ".join(f"{r} at batch {b} ({timing[(r, 'int8', b)]:.3f} against "
                                     f"{timing[(r, 'fp32', b)]:.3f} ms)" for r, b in slower)
                         + ": on this CPU int8 does not pay there; ship the fp32 file.")
    return notes


def _at_the_floor(models: list[dict], family) -> list[str]:
    """Exported sub-models whose every width is the smallest the space offers: the front may go on below."""
    floor = [m["name"] for m in models
             if all(v == family.space[k].choices[0] for k, v in m["arch"].items()
                    if k.startswith("width:") and k not in family.idle(m["arch"]))]
    if not floor:
        return []
    return [f"{', '.join(floor)} {'has' if len(floor) == 1 else 'have'} every width at the smallest choice of the space: "
            "the front touches its edge, and smaller fractions in elastic.width may find faster models."]


def _training(folder) -> list[dict]:
    from onefit.checkpoint import read_manifest

    curves = []
    for name in ("pretrain", "family"):
        if (folder.path / name / "family.json").exists():
            history = read_manifest(folder.path / name).get("history") or []
            if history:
                label = "pretraining (full model)" if name == "pretrain" else f"family ({history[-1].get('recipe')})"
                curves.append({"label": f"{label}: largest", "x": [h["epoch"] for h in history],
                               "y": [h["loss_largest"] for h in history]})
                if name == "family":
                    curves.append({"label": f"{label}: mean of the step's sub-models", "x": [h["epoch"] for h in history],
                                   "y": [h["loss_mean"] for h in history]})
    if not curves:
        return []
    return [{"id": "training", "svg": svg.curves_svg(curves, "epoch", "training loss"),
             "caption": "training loss per epoch"}]


def _left_out(models: list[dict], coverage: dict, front: dict) -> list[str]:
    notes = [f"{m['name']}: {l['file']} left out: {l['why']}" for m in models for l in m["left_out"]]
    whole = [l for l in coverage.get("layers", []) if not l["elastic"]]
    if whole:
        notes.append(f"{len(whole)} layer(s) stay whole, {sum(l['params'] for l in whole):,} params: "
                     + "; ".join(f"{l['name']} ({l['width_out']})" for l in whole[:8]) + (" ..." if len(whole) > 8 else ""))
    if front.get("failed"):
        notes.append(f"{front['failed']} of {front['evaluated']} evaluations failed (their reasons are in study.db)")
    return notes or ["nothing: every chosen sub-model was exported in every precision asked for"]


def gather(folder, family, task) -> dict:
    """The report as data (``onefit.report.page``)."""
    record = folder.record
    manifest = _read(folder.path / "models" / "manifest.json", {"models": []})
    models = manifest["models"]
    front = _read(folder.path / "front.json", {"front": [], "evaluated": 0})
    evaluated = _evaluated(folder)
    coverage = _read(folder.path / "coverage.json", {})
    best = headline(models, task.metric_name, within=1.0 if "%" in task.metric_name else 0.01)
    sections = [
        {"title": "At a glance", "text": [best]},
        {"title": "Exported models", "text": [
            "Each file was checked against PyTorch on inputs other than the example, scored on the test data, and "
            "timed where it will run (median and 90th percentile of repeated runs); models/manifest.json lists "
            "them with their sha256."], "tables": [_models(models, family, task.metric_name)]},
        {"title": "Fronts", "text": _off_the_measured_front(models, task) + _at_the_floor(models, family),
         "figures": _fronts(models, front, evaluated, task, family)},
        {"title": "Training", "figures": _training(folder)},
        {"title": "Coverage", "text": [
            f"{coverage.get('space_size', 0):,} sub-models; {coverage.get('coverage', 0):.1%} of the parameters are in "
            "layers that can shrink."], "tables": [{"id": "coverage", "columns": [
                "layer", "type", "params", "input width", "output width", "depth", "elastic"],
                "rows": [[l["name"], l["type"], l["params"], l["width_in"], l["width_out"], l["depth"],
                          "yes" if l["elastic"] else "no"] for l in coverage.get("layers", [])]}]},
        {"title": "Left out, and why", "text": _left_out(models, coverage, front)
         + ([f"int8: {manifest['cpu']['int8_weights']} (instruction sets seen: "
             f"{', '.join(manifest['cpu']['isa']) or 'none reported'})."] if "cpu" in manifest else [])},
        _what_was_run(folder, record, task),
    ]
    return {"title": f"onefit run: {folder.path.name}", "sections": sections}


def _fastest_ms(model: dict, file: dict) -> tuple[float, int] | None:
    """The median latency of ``file`` (of ``model``) at its smallest batch."""
    timed = [(l["batch"], l["median_ms"]) for l in model["latency"]
             if l["runtime"] == file.get("runtime", "onnxruntime") and l["precision"] == file["precision"]]
    return (min(timed)[1], min(timed)[0]) if timed else None


def headline(models: list[dict], metric: str, within: float = 1.0) -> str:
    """The best exported file, and the fastest one within ``within`` of its metric."""
    files = [(m, f) for m in models for f in m["files"] if f.get("metric")]
    if not files:
        return "No model was exported." if not models else f"{len(models)} sub-models exported, none scored."

    def said(m, f) -> str:
        timing = _fastest_ms(m, f)
        speed = f", {timing[0]:.3f} ms at batch {timing[1]}" if timing else ""
        return (f"{m['name']} on {f.get('runtime', 'onnxruntime')} {f['precision']}: {f['metric']['onnx']:.2f} {metric}, "
                f"{m['params']:,} params, {m['macs']:,} MACs{speed}")

    best = max(files, key=lambda mf: mf[1]["metric"]["onnx"])
    close = [mf for mf in files if mf[1]["metric"]["onnx"] >= best[1]["metric"]["onnx"] - within and _fastest_ms(*mf)]
    fastest = min(close, key=lambda mf: _fastest_ms(*mf)[0]) if close else best
    text = f"{len(models)} sub-models exported as {len(files)} verified files. Best: {said(*best)}."
    if fastest is not best:
        text += f" Fastest within {within:g} of it: {said(*fastest)}."
    return text


def _evaluated(folder) -> list[dict]:
    import optuna

    from onefit.search.study import storage_url

    if not (folder.path / "study.db").exists():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="onefit", storage=storage_url(folder.path / "study.db"))
    return [t.user_attrs["onefit"] for t in study.get_trials(deepcopy=False) if "onefit" in t.user_attrs]


def write_report(folder, family, task) -> list[Path]:
    data = gather(folder, family, task)
    paths = [folder.path / "report.html", folder.path / "report.md", folder.path / "report.json"]
    atomic_write(paths[0], page.html(data).encode())
    atomic_write(paths[1], page.markdown(data).encode())
    atomic_write(paths[2], json.dumps(data, indent=1).encode())
    return paths
