"""The ``onefit`` command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(help="onefit: one network, a family of nested sub-models, the one that fits.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """onefit command line."""


@app.command()
def demo(
    out: Path = typer.Option(None, help="run folder (default: runs/demo-<time>)"),
    pretrain_epochs: int = typer.Option(10, min=1, help="epochs of plain training of the full model"),
    family_epochs: int = typer.Option(20, min=1, help="SortedNet epochs over the family"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """The whole flow on scikit-learn's bundled digits, in a few minutes."""
    from onefit.demo import DemoConfig, print_table, run_demo

    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    config = DemoConfig(pretrain_epochs=pretrain_epochs, family_epochs=family_epochs, seed=seed)
    result = run_demo(out, config)
    print_table(result)
    typer.echo(f"run folder: {out}")


def _import(spec: str):
    import importlib

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"expected an import path module:function, got {spec!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}") from err


def _parse_bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"--bits: comma-separated integers, got {text!r}") from None


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="module:function that returns the model, e.g. onefit.zoo:resnet"),
    input_shape: str = typer.Option("1,1,8,8", help="shape of one example input, comma separated"),
    kwargs: str = typer.Option("{}", help="keyword arguments for the function, as JSON"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    bits: str = typer.Option("", help="weight bit-widths offered to every Linear and conv, e.g. 2,4,8 (32 is always one)"),
) -> None:
    """What onefit can shrink in a model, what stays whole and why, before any training."""
    import json

    import torch
    from rich.console import Console
    from rich.table import Table

    import onefit

    try:
        shape = tuple(int(d) for d in input_shape.split(","))
        built = _import(model)(**json.loads(kwargs))
        config = onefit.ElasticConfig(bits=_parse_bits(bits)) if bits else None
        report = onefit.inspect(built, (torch.randn(*shape),), config)
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
        return
    table = Table(title=f"{model}: coverage")
    with_bits = any(layer.bits for layer in report.layers)
    for col in ("layer", "type", "params", "input width", "output width", "depth") + ("bits",) * with_bits:
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold")
    for layer in report.layers:
        style = None if layer.elastic else "dim"
        table.add_row(layer.name, layer.type, f"{layer.params:,}", layer.width_in, layer.width_out, layer.depth,
                      *(layer.bits,) * with_bits, style=style)
    console = Console()
    console.print(table)
    console.print(f"{report.space_size:,} sub-models over {len(report.dimensions)} dimensions, "
                  f"{report.params_min:,} to {report.params_max:,} params; "
                  f"{report.coverage:.1%} of parameters in elastic layers; the smallest drops {report.reducible:.1%}")
    if with_bits:
        console.print(f"weights take {report.weight_bytes_min:,} to {report.weight_bytes_max:,} bytes")


def _load_data(run: Path):
    import json

    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    if "data" not in config:
        return None, None
    return _import(config["data"])(**config.get("data_kwargs", {}))


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="run folder holding family/ (and config.json naming its data)"),
    arch: str = typer.Option(None, help='arch as JSON, e.g. \'{"depth:stages.0": 1}\' (others at max)'),
    params: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many params"),
    macs: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many MACs"),
    int8: bool = typer.Option(False, "--int8", help="quantize to int8 (static QDQ for convolutional models)"),
    name: str = typer.Option("model", help="file name under RUN/models/"),
    min_cosine: float = typer.Option(None, help="parity floor (default 0.99999 fp32, 0.98 int8)"),
    full_range: bool = typer.Option(False, "--full-range", help="int8 weights on 8 bits, not 7: only for "
                                    "CPUs with VNNI or ARM (x86 AVX2 without VNNI overflows)"),
) -> None:
    """Extract one sub-model from a run folder and export it to a verified ONNX file."""
    import json

    import onefit
    from onefit.export import ExportError, export

    try:
        family = onefit.load(run / "family")
        if arch is not None:
            chosen = family.space.complete(json.loads(arch))
        else:
            budget = {k: v for k, v in (("params", params), ("macs", macs)) if v is not None}
            chosen = onefit.largest_within(family, **budget) if budget else family.space.max()
        train_data, test_data = _load_data(run)
        module = family.extract(chosen)
        if train_data is not None:
            module = onefit.recalibrate_bn(module, train_data)
        example = family.example_inputs[0]
        target = run / "models" / f"{name}{'-int8' if int8 else ''}.onnx"
        report = export(module, target, (example,), quantize="int8" if int8 else None,
                        calibration=train_data, eval_data=test_data, min_cosine=min_cosine,
                        reduce_range=not full_range)
    except (ValueError, ExportError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    (target.with_suffix(".json")).write_text(json.dumps({"arch": chosen, **report.to_json()}, indent=1))
    typer.echo(f"wrote {target} ({report.bytes:,} bytes, {report.method}); parity: max abs error "
               f"{report.max_abs_error:.2e}, cosine {report.cosine:.6f}")
    if report.accuracy:
        acc = report.accuracy
        typer.echo(f"accuracy: torch {acc['torch']:.2f}%, onnx {acc['onnx']:.2f}% ({acc['change']:+.2f} points)")


def _parse_constraints(items: list[str]) -> dict[str, float]:
    constraints = {}
    for item in items:
        name, sep, bound = item.partition("<=")
        try:
            constraints[name.strip()] = float(bound)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"a constraint is NAME<=BOUND, e.g. params<=50000 or latency_ms<=2; got {item!r}")
    return constraints


@app.command("search")
def search_command(
    run: Path = typer.Argument(..., help="run folder holding family/ and config.json naming its data"),
    searcher: str = typer.Option("linas", help="random, nsga2, linas (predictor-assisted), n2n or tree"),
    budget: int = typer.Option(100, min=1, help="evaluations (a resumed study counts those it has)"),
    objectives: str = typer.Option("error,macs,params", help="comma separated: error, params, macs, weight_bytes, "
                                   "latency_ms (when the family has a latency model)"),
    constraint: list[str] = typer.Option([], help="NAME<=BOUND, repeatable, e.g. --constraint params<=50000"),
    storage: str = typer.Option(None, help="study storage: a path or database URL (default RUN/study.db)"),
    study: str = typer.Option("onefit", help="study name inside the storage"),
    seed: int = typer.Option(0, help="searcher seed"),
) -> None:
    """Search a trained family's accuracy / cost front; resumable; writes front.json, front.csv, plots."""
    import json

    import onefit
    from onefit.data import validation_split
    from onefit.report.tables import front_table
    from onefit.nas import SEARCHERS, StudyError, family_problem, search

    try:
        if searcher not in SEARCHERS:
            raise ValueError(f"unknown searcher {searcher!r}; choose one of {sorted(SEARCHERS)}")
        family = onefit.load(run / "family")
        train_data, _ = _load_data(run)
        if train_data is None:
            raise ValueError(f"{run / 'config.json'} names no data to evaluate sub-models on")
        fit_data, val_data = validation_split(train_data, seed=json.loads((run / "config.json").read_text()).get("seed", 0))
        problem = family_problem(family, val_data, calibration=fit_data, objectives=objectives.split(","),
                                 constraints=_parse_constraints(constraint))
        front = search(problem, SEARCHERS[searcher](seed=seed), budget=budget, storage=storage or run / "study.db",
                       study_name=study)
    except (ValueError, StudyError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    front.save_json(run / "front.json")
    front.save_csv(run / "front.csv")
    plots = front.plot(run / "plots")
    from rich.console import Console

    from onefit.demo import summarize

    console = Console()
    console.print(f"front: {len(front)} of {len(front.evaluated)} evaluated (validation error)")
    console.print(front_table(front, None, lambda arch: summarize(family, arch)))
    typer.echo(f"wrote {run / 'front.json'}, {run / 'front.csv'} and {len(plots)} plot(s) in {run / 'plots'}")


if __name__ == "__main__":
    app()
