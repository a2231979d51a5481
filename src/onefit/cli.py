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


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help="module:function that returns the model, e.g. onefit.zoo:resnet"),
    input_shape: str = typer.Option("1,1,8,8", help="shape of one example input, comma separated"),
    kwargs: str = typer.Option("{}", help="keyword arguments for the function, as JSON"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
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
        report = onefit.inspect(built, (torch.randn(*shape),))
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
        return
    table = Table(title=f"{model}: coverage")
    for col in ("layer", "type", "params", "input width", "output width", "depth"):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold")
    for layer in report.layers:
        style = None if layer.elastic else "dim"
        table.add_row(layer.name, layer.type, f"{layer.params:,}", layer.width_in, layer.width_out, layer.depth,
                      style=style)
    console = Console()
    console.print(table)
    console.print(f"{report.space_size:,} sub-models over {len(report.dimensions)} dimensions, "
                  f"{report.params_min:,} to {report.params_max:,} params; "
                  f"{report.coverage:.1%} of parameters in elastic layers; the smallest drops {report.reducible:.1%}")


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
                        calibration=train_data, eval_data=test_data, min_cosine=min_cosine)
    except (ValueError, ExportError, json.JSONDecodeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    (target.with_suffix(".json")).write_text(json.dumps({"arch": chosen, **report.to_json()}, indent=1))
    typer.echo(f"wrote {target} ({report.bytes:,} bytes, {report.method}); parity: max abs error "
               f"{report.max_abs_error:.2e}, cosine {report.cosine:.6f}")
    if report.accuracy:
        acc = report.accuracy
        typer.echo(f"accuracy: torch {acc['torch']:.2f}%, onnx {acc['onnx']:.2f}% ({acc['change']:+.2f} points)")


if __name__ == "__main__":
    app()
