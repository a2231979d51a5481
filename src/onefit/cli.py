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


if __name__ == "__main__":
    app()
