"""The ``onefit`` command line."""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import typer

app = typer.Typer(help="onefit: one network, a family of nested sub-models, the one that fits. "
                       "Exit status: 0 done, 1 the work failed, 2 bad usage (a flag's value).",
                  no_args_is_help=True, add_completion=False)


CODE_WARNING = "imports and runs that code"
TRUST_HELP = ("import the model and data factories the run folder names even when they are not onefit's own "
              "(this runs that code; only for folders you trust)")


class CommandError(RuntimeError):
    """A command that could not do its work; its message is the whole story."""
_debug = False  # set by --debug: tracebacks instead of one-line errors


def _version(value: bool) -> None:
    if value:
        from onefit import __version__

        typer.echo(f"onefit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="show the full traceback of a failure"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """onefit command line."""
    global _debug
    _debug = debug


@contextlib.contextmanager
def _failures(what: str | None = None):
    """Runtime failures as one line and exit status 1 (the traceback with --debug); a flag's bad
    value (``typer.BadParameter``) passes through to click, which exits with status 2."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except Exception as err:
        if _debug:
            raise
        own = type(err).__module__.startswith("onefit") or type(err) in (ValueError, TypeError, KeyError)
        detail = str(err) if own else f"{type(err).__name__}: {err}"
        typer.echo(f"error: {what + ' failed: ' if what else ''}{detail}", err=True)
        raise typer.Exit(1)


def _bad(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def _json_object(flag: str, text: str, example: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad(flag, f"expected a JSON object such as {example}, got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise _bad(flag, f"expected a JSON object such as {example}, got a JSON {type(value).__name__}")
    return value


def _file_name(flag: str, name: str) -> str:
    """A plain file name: no folder, no '..', nothing hidden."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or ".." in name:
        raise _bad(flag, f"a file name of letters, digits, '_', '-' and '.', not a path; got {name!r}")
    return name


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="the run config, a TOML file (examples/*.toml shows every section); "
                                  f"a module:function it names is the caller's own: onefit {CODE_WARNING}"),
    out: Path = typer.Option(None, "--out", help="run folder (default: runs/<config name>)"),
    restart_from: str = typer.Option(None, "--restart-from", help="redo this stage and every later one "
                                     "(inspect, pretrain, train, search, export, report)"),
    set_: list[str] = typer.Option([], "--set", help="override one config value, e.g. --set train.epochs=2 "
                                   "(repeatable; the value is TOML)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The whole job from one config: inspect, pretrain, train, search, export, report; resumable.
    Under torchrun, every process trains (data parallel) and rank 0 runs the rest."""
    from onefit.run import ConfigError, load_config, run

    out = out or Path("runs") / config.stem
    with _failures():
        try:
            parsed, _ = load_config(config, set_)
        except ConfigError as err:
            if _debug:
                raise
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2)
        folder = run(parsed, out, restart_from=restart_from, progress=not quiet, echo=typer.echo,
                     source_text=config.read_text())
    if folder is not None:  # None: a torchrun rank other than 0
        typer.echo(f"run folder: {folder.path}; report: {folder.path / 'report.html'}")


def _made_by_run(ctx: typer.Context, run: Path, stage: str, allowed: tuple = ("run", "trust_code")) -> bool:
    """Whether to redo ``stage`` of a folder made by ``onefit run`` from its recorded config: it is
    one, and no flag asks for something else (with flags, the command does what they say)."""
    if not (run / "run.json").exists():
        return False
    # by name: typer may bring its own copy of click, whose enum is not click.core's
    return all(n in allowed or getattr(ctx.get_parameter_source(n), "name", "") == "DEFAULT" for n in ctx.params)


def _run_stage(run: Path, stage: str, trust_code: bool, quiet: bool, **options) -> None:
    """One stage of a run folder made by ``onefit run``, redone from its recorded config;
    ``options``: how to run it (``onefit.run.Job``'s), not what it computes."""
    from onefit.run import run as run_stages, run_folder_job

    with _failures():
        _, config = run_folder_job(run)
        folder = run_stages(config, run, only=stage, trusted=trust_code, from_folder=True, progress=not quiet,
                            echo=typer.echo, **options)
    if folder is not None:
        typer.echo(f"run folder: {folder.path}")


@app.command("train")
def train_command(
    run: Path = typer.Argument(..., help="a run folder made by onefit run"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """(Re)train a run folder's family from its recorded config; the search, export and report then redo.
    Under torchrun (torchrun --nproc-per-node N -m onefit train RUN), data parallel over N processes."""
    _run_stage(run, "train", trust_code, quiet)


@app.command("report")
def report_command(
    run: Path = typer.Argument(..., help="a run folder made by onefit run"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
) -> None:
    """Write a run folder's report.html, report.md and report.json again."""
    _run_stage(run, "report", trust_code, True)


@app.command()
def demo(
    out: Path = typer.Option(None, help="run folder (default: runs/demo-<time>)"),
    pretrain_epochs: int = typer.Option(10, min=1, help="epochs of plain training of the full model"),
    family_epochs: int = typer.Option(20, min=1, help="SortedNet epochs over the family"),
    seed: int = typer.Option(0, help="random seed"),
    set_: list[str] = typer.Option([], "--set", help="override a value of the bundled config, e.g. search.budget=30"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """The whole job on scikit-learn's bundled digits in a few minutes: onefit run on the bundled
    config (onefit/examples/digits.toml)."""
    from onefit.demo import EXAMPLES, example_config, print_summary
    from onefit.run import run
    from onefit.run.stages import trained_family
    from onefit.run.job import Job

    out = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    overrides = [f"pretrain.epochs={pretrain_epochs}", f"train.epochs={family_epochs}", f"seed={seed}", *set_]
    with _failures("the demo"):
        config = example_config("digits", overrides)
        folder = run(config, out, progress=not quiet, echo=typer.echo, source_text=EXAMPLES["digits"].read_text())
        print_summary(folder, trained_family(Job(config), folder))
    typer.echo(f"run folder: {folder.path}; report: {folder.path / 'report.html'}")


def _parse_bits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise _bad("--bits", f"--bits: comma-separated integers, got {text!r}") from None


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise _bad("--input-shape", f"positive integers separated by commas, e.g. 1,1,8,8; got {text!r}")
    return shape


@app.command("inspect")
def inspect_command(
    model: str = typer.Argument(..., help=f"module:function that returns the model, e.g. onefit.zoo:resnet "
                                f"(onefit {CODE_WARNING}; the working directory is on the import path)"),
    input_shape: str = typer.Option("1,1,8,8", help="shape of one example input, comma separated"),
    tokens: bool = typer.Option(False, "--tokens", help="the example input is token ids (zeros, int64), for "
                                "language models and text encoders; shape e.g. 1,16"),
    kwargs: str = typer.Option("{}", help="keyword arguments for the function, as a JSON object"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    bits: str = typer.Option("", help="weight bit-widths offered to every Linear and conv, e.g. 2,4,8 (32 is always one)"),
) -> None:
    """What onefit can shrink in a model, what stays whole and why, before any training. A factory
    that builds its model under torch.device("meta") is inspected without allocating its weights."""
    import torch
    from rich.console import Console
    from rich.table import Table

    import onefit
    from onefit.trust import import_path

    shape = _parse_shape(input_shape)
    arguments = _json_object("--kwargs", kwargs, '\'{"widths": [8, 16]}\'')
    try:
        config = onefit.ElasticConfig(bits=_parse_bits(bits)) if bits else None
    except ValueError as err:
        raise _bad("--bits", str(err)) from None
    with _failures():
        try:
            factory = import_path(model, "model factory")
        except ValueError as err:  # no such module or function: the argument is wrong
            raise _bad("MODEL", str(err)) from None
        except Exception as err:  # the module itself fails on import
            if _debug:
                raise
            raise CommandError(f"importing {model!r} raised {type(err).__name__}: {err}") from err
        try:
            built = factory(**arguments)
        except Exception as err:
            if _debug:
                raise
            raise CommandError(f"the model factory {model!r} raised {type(err).__name__}: {err}") from err
        device = next((p.device for p in built.parameters()), torch.device("cpu"))  # meta: no weights
        example = torch.zeros(*shape, dtype=torch.long, device=device) if tokens else torch.randn(*shape, device=device)
        report = onefit.inspect(built, (example,), config)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
        return
    table = Table(title=f"{model}: coverage")
    extra = report.columns  # what the dimension kinds add: bits, rank, ...
    for col in ("layer", "type", "params", "input width", "output width", "depth", *extra):
        table.add_column(col, justify="right" if col == "params" else "left", overflow="fold")
    for layer in report.layers:
        style = None if layer.elastic else "dim"
        table.add_row(layer.name, layer.type, f"{layer.params:,}", layer.width_in, layer.width_out, layer.depth,
                      *(layer.columns.get(col, "") for col in extra), style=style)
    console = Console()
    console.print(table)
    console.print(f"{report.space_size:,} sub-models over {len(report.dimensions)} dimensions, "
                  f"{report.params_min:,} to {report.params_max:,} params; "
                  f"{report.coverage:.1%} of parameters in elastic layers; the smallest drops {report.reducible:.1%}")
    if "bits" in extra:
        console.print(f"weights take {report.weight_bytes_min:,} to {report.weight_bytes_max:,} bytes")


def _run_config(run: Path) -> dict:
    """The run folder's config.json as a dict ({} when there is none)."""
    path = run / "config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CommandError(f"{path} is not valid JSON: {err}") from err
    return config if isinstance(config, dict) else {}


def _load_data(run: Path, data: str | None, trust_code: bool, config: dict):
    """(train, test) loaders: from ``--data`` (the caller's own code), else the factory the run's
    ``config`` names (onefit's own, or any with ``--trust-code``), else (None, None)."""
    from onefit.trust import import_path, resolve

    if data is not None:
        return import_path(data, "data factory")()
    if "data" not in config:
        return None, None
    path = run / "config.json"
    kwargs = config.get("data_kwargs", {})
    if not isinstance(kwargs, dict):
        raise CommandError(f"{path}: data_kwargs must be a JSON object, got {type(kwargs).__name__}")
    return resolve(config["data"], what=f"data factory in {path}", trusted=trust_code)(**kwargs)


def _recalibrated(module, train_data, keep_statistics: bool):
    """``module`` with batch-norm statistics re-estimated on ``train_data``: a sub-model's own
    statistics are not the largest model's. Without data that is refused, unless asked."""
    from torch import nn

    import onefit

    has_bn = any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)) for m in module.modules())
    if train_data is not None and has_bn:
        return onefit.recalibrate_bn(module, train_data)
    if has_bn and not keep_statistics:
        raise CommandError("this sub-model has batch norm, whose statistics must be re-estimated on training data, "
                           "and the run folder names no data (no config.json). Pass --data module:function, or "
                           "--keep-bn-statistics to export the family's stored statistics (they are the largest "
                           "sub-model's and can cost a smaller one much accuracy)")
    return module


@app.command("export")
def export_command(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run folder holding family/ (and config.json naming its data)"),
    arch: str = typer.Option(None, help='arch as a JSON object, e.g. \'{"depth:stages.0": 1}\' (others at max)'),
    params: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many params"),
    macs: int = typer.Option(None, help="instead of --arch: the largest nested sub-model within this many MACs"),
    int8: bool = typer.Option(False, "--int8", help="quantize to int8 (static QDQ for convolutional models)"),
    name: str = typer.Option("model", help="file name under RUN/models/ (a name, not a path)"),
    min_cosine: float = typer.Option(None, help="parity floor (default 0.99999 fp32, 0.98 int8)"),
    full_range: bool = typer.Option(False, "--full-range", help="int8 weights on 8 bits, not 7: only for "
                                    "CPUs with VNNI or ARM (x86 AVX2 without VNNI overflows)"),
    data: str = typer.Option(None, help="module:function returning (train, test) loaders, instead of the "
                             f"data config.json names (onefit {CODE_WARNING})"),
    keep_bn_statistics: bool = typer.Option(False, "--keep-bn-statistics", help="without data, export the "
                                            "family's stored batch-norm statistics instead of refusing"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
) -> None:
    """Extract one sub-model from a run folder and export it to a verified ONNX file; on a folder made
    by onefit run (no flags), redo its export stage from the config."""
    if _made_by_run(ctx, run, "export"):
        return _run_stage(run, "export", trust_code, False)
    import onefit
    from onefit.export import export

    name = _file_name("--name", name)
    wanted = _json_object("--arch", arch, '\'{"depth:stages.0": 1}\'') if arch is not None else None
    with _failures():
        family = onefit.load(run / "family", trust_code=trust_code)
        if wanted is not None:
            try:
                chosen = family.space.complete(wanted)
            except onefit.ArchError as err:
                raise _bad("--arch", str(err)) from None
        else:
            budget = {k: v for k, v in (("params", params), ("macs", macs)) if v is not None}
            chosen = onefit.largest_within(family, **budget) if budget else family.space.max()
        train_data, test_data = _load_data(run, data, trust_code, _run_config(run))
        module = _recalibrated(family.extract(chosen), train_data, keep_bn_statistics)
        example = family.example_inputs[0]
        target = run / "models" / f"{name}{'-int8' if int8 else ''}.onnx"
        report = export(module, target, (example,), quantize="int8" if int8 else None,
                        calibration=train_data, eval_data=test_data, min_cosine=min_cosine,
                        reduce_range=not full_range)
        from onefit.checkpoint import atomic_write

        atomic_write(target.with_suffix(".json"), json.dumps({"arch": chosen, **report.to_json()}, indent=1).encode())
    typer.echo(f"wrote {target} ({report.bytes:,} bytes, {report.method}); parity on {len(report.parity_inputs)} "
               f"inputs: max abs error {report.max_abs_error:.2e}, cosine {report.cosine:.6f}")
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
            raise _bad("--constraint", f"a constraint is NAME<=BOUND, e.g. params<=50000 or latency_ms<=2; got {item!r}")
    return constraints


@app.command("search")
def search_command(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run folder holding family/ and config.json naming its data"),
    searcher: str = typer.Option("linas", help="random, nsga2, optuna_nsga2 (optuna's sampler), linas "
                                 "(predictor-assisted), n2n or tree"),
    budget: int = typer.Option(100, min=1, help="evaluations (a resumed study counts those it has)"),
    objectives: str = typer.Option("error,macs,params", help="comma separated: error, params, macs, weight_bytes, "
                                   "latency_ms (when the family has a latency model)"),
    constraint: list[str] = typer.Option([], help="NAME<=BOUND, repeatable, e.g. --constraint params<=50000"),
    storage: str = typer.Option(None, help="study storage: a path or database URL (default RUN/study.db), e.g. "
                                "postgresql://user:password@host/db for workers on many machines"),
    study: str = typer.Option("onefit", help="study name inside the storage"),
    workers_share: bool = typer.Option(False, "--workers-share", help="this process is one of several workers on "
                                       "the study: the budget is the study's, no arch is evaluated twice, a dead "
                                       "worker's claim is taken over, and the front printed is the whole study's"),
    claim_timeout: float = typer.Option(120.0, "--claim-timeout", min=1.0, help="with --workers-share: seconds "
                                        "without a heartbeat after which a worker's claim is taken over"),
    seed: int = typer.Option(0, help="searcher seed"),
    data: str = typer.Option(None, help="module:function returning (train, test) loaders, instead of the "
                             f"data config.json names (onefit {CODE_WARNING})"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_HELP),
) -> None:
    """Search a trained family's accuracy / cost front; resumable; writes front.json, front.csv, plots.
    On a folder made by onefit run (no flags), redo its search stage (and what follows) from the config."""
    if workers_share and storage is None:
        raise _bad("--workers-share", "needs --storage, a database every worker reaches (postgresql://...)")
    if _made_by_run(ctx, run, "search", allowed=("run", "trust_code", "storage", "study", "workers_share",
                                                 "claim_timeout")):
        return _run_stage(run, "search", trust_code, False, storage=storage, study=study, share=workers_share,
                          claim_timeout_s=claim_timeout)
    import onefit
    from onefit.data import validation_split
    from onefit.report.tables import front_table
    from onefit.report.plots import plot_front
    from onefit.search import SEARCHERS, ProblemError, family_problem, search

    if searcher not in SEARCHERS:
        raise _bad("--searcher", f"unknown searcher {searcher!r}; choose one of {sorted(SEARCHERS)}")
    constraints = _parse_constraints(constraint)
    with _failures():
        family = onefit.load(run / "family", trust_code=trust_code)
        config = _run_config(run)
        train_data, _ = _load_data(run, data, trust_code, config)
        if train_data is None:
            raise CommandError(f"{run / 'config.json'} names no data to evaluate sub-models on; pass --data")
        seed_of_split = config.get("seed", 0) if data is None else 0
        fit_data, val_data = validation_split(train_data, seed=seed_of_split)
        try:
            problem = family_problem(family, val_data, calibration=fit_data, objectives=objectives.split(","),
                                     constraints=constraints)
        except ProblemError as err:  # an objective or a constraint the family cannot have
            raise _bad("--constraint" if "constraint" in str(err) else "--objectives", str(err)) from None
        front = search(problem, SEARCHERS[searcher](seed=seed), budget=budget, storage=storage or run / "study.db",
                       study_name=study, share=workers_share, claim_timeout_s=claim_timeout)
        front.save_json(run / "front.json")
        front.save_csv(run / "front.csv")
        plots = plot_front(front, run / "plots")
    from rich.console import Console

    from onefit.report.tables import summarize

    console = Console()
    console.print(f"front: {len(front)} of {len(front.evaluated)} evaluated (validation error)")
    console.print(front_table(front, None, lambda arch: summarize(family, arch)))
    typer.echo(f"wrote {run / 'front.json'}, {run / 'front.csv'} and {len(plots)} plot(s) in {run / 'plots'}")


if __name__ == "__main__":
    app()
