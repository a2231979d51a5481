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


def _load_data(run: Path):
    import importlib
    import json

    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    if "data" not in config:
        return None, None
    module, _, function = config["data"].partition(":")
    return getattr(importlib.import_module(module), function)(**config.get("data_kwargs", {}))


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="run folder holding family/ (and config.json naming its data)"),
    arch: str = typer.Option(None, help='arch as JSON, e.g. \'{"depth:stages.0": 1}\' (others at max)'),
    params: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many params"),
    macs: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many MACs"),
    int8: bool = typer.Option(False, "--int8", help="quantize to int8 (static QDQ for convolutional models)"),
    name: str = typer.Option("model", help="file name under RUN/models/"),
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
                        calibration=train_data, eval_data=test_data)
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
