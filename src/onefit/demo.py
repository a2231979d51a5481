"""The whole flow on scikit-learn's bundled digits: train a ResNet, turn it into a family, train
the family with SortedNet, tabulate sub-models from smallest to largest, and search the
error x MACs x params front on held-out validation data."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from onefit.checkpoint import atomic_write
from onefit.cost import costs, measure_latency
from onefit.data import digits, validation_split
from onefit.family import elasticize
from onefit.importance import sort_
from onefit.report.tables import spread
from onefit.select import distinct_chain, largest_within
from onefit.train import SortedNetConfig, SortedNetRecipe, evaluate, recalibrate_bn, train, train_plain
from onefit.zoo import build


@dataclass(frozen=True)
class DemoConfig:
    pretrain_epochs: int = 10  # plain training of the full model before it becomes a family
    family_epochs: int = 20  # SortedNet epochs over the family
    rows: int = 10  # sub-models in the table, spread over the nested chain
    seed: int = 0
    lr: float = 3e-3
    widths: tuple = (32, 64)  # of the ResNet's two stages
    blocks: tuple = (3, 3)
    search_budget: int = 60  # sub-models the predictor-assisted search evaluates


def summarize(family, arch: dict) -> str:
    depths = [str(v) for k, v in arch.items() if k.startswith("depth:")]
    idle = family.idle(arch)  # widths inside skipped blocks say nothing about this sub-model
    fractions = [v / family.space[k].choices[-1] for k, v in arch.items() if k.startswith("width:") and k not in idle]
    width = 100 * sum(fractions) / max(len(fractions), 1)
    return f"d{'+'.join(depths) or '-'} w{width:.0f}%"


def run_demo(out: Path, config: DemoConfig | None = None, progress: bool = True) -> dict:
    config = config or DemoConfig()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    train_all, test_data = digits(batch_size=64, seed=config.seed)
    train_data, val_data = validation_split(train_all, seed=config.seed)  # the search selects on val
    model, source = build("resnet", in_channels=1, widths=list(config.widths), blocks=list(config.blocks), classes=10)
    example = next(iter(test_data))[0][:1]

    train_plain(model, train_data, config.pretrain_epochs, config.lr, progress)
    full_accuracy = evaluate(model, test_data)
    family = sort_(elasticize(model, (example,)))
    family.source = source
    recipe = SortedNetRecipe(SortedNetConfig(seed=config.seed))
    optimizer = torch.optim.Adam(family.parameters(), lr=config.lr)
    train(family, train_data, recipe, epochs=config.family_epochs, optimizer=optimizer,
          checkpoint=out / "family", progress=progress)

    rows = []
    for arch in spread(distinct_chain(family), config.rows):
        sub = recalibrate_bn(family.extract(arch), train_data)
        cost = costs(family, arch)
        rows.append({
            "arch": arch,
            "summary": summarize(family, arch),
            **cost,
            "accuracy": evaluate(sub, test_data),
            "latency_b1": measure_latency(sub, example, backend="onnxruntime", cost=cost).to_json(),
        })
    front = search_front(family, train_data, val_data, out, config)
    budget = rows[len(rows) // 2]["params"]
    pick = largest_within(family, params=budget)
    result = {
        "config": asdict(config),
        "space_size": family.space.size,
        "full_model_accuracy": full_accuracy,
        "rows": rows,
        "largest_within_params": {"budget": budget, "arch": pick, "summary": summarize(family, pick)},
        "front": {**front.to_json(), "summaries": [summarize(family, t.arch) for t in front]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    run_config = {"data": "onefit.data:digits", "data_kwargs": {"batch_size": 64, "seed": config.seed}, **asdict(config)}
    atomic_write(out / "config.json", json.dumps(run_config, indent=1).encode())
    atomic_write(out / "table.json", json.dumps(result, indent=1).encode())
    return result


def search_front(family, train_data, val_data, out: Path, config: DemoConfig):
    """Predictor-assisted search of the error x MACs x params front, recorded in out/study.db."""
    from onefit.report.plots import plot_front
    from onefit.search import PredictorSearch, family_problem, search

    problem = family_problem(family, val_data, calibration=train_data, objectives=("error", "macs", "params"))
    front = search(problem, PredictorSearch(seed=config.seed), budget=config.search_budget, storage=out / "study.db")
    front.save_json(out / "front.json")
    front.save_csv(out / "front.csv")
    plot_front(front, out / "plots")
    return front


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"digits ResNet family: {result['space_size']:,} sub-models, {len(result['rows'])} shown")
    for col in ("#", "sub-model", "params", "MACs", "acc %", "ORT ms b=1", "p90 ms", "of peak"):
        table.add_column(col, justify="left" if col == "sub-model" else "right")
    for i, row in enumerate(result["rows"]):
        lat = row["latency_b1"]
        table.add_row(str(i), row["summary"], f"{row['params']:,}", f"{row['macs']:,}", f"{row['accuracy']:.1f}",
                      f"{lat['median_ms']:.3f}", f"{lat['p90_ms']:.3f}", f"{lat['efficiency']:.1%}")
    console = Console()
    console.print(table)
    console.print(f"full model trained alone: {result['full_model_accuracy']:.1f}% test accuracy")
    pick = result["largest_within_params"]
    console.print(f"largest nested sub-model within {pick['budget']:,} params: {pick['summary']} "
                  f"(full arch in table.json)")
    from onefit.report.tables import front_table
    from onefit.search import Front, Trial

    data = result["front"]
    front = Front([Trial.from_json(t) for t in data["front"]], data["objectives"])
    names = {json.dumps(t["arch"], sort_keys=True): s for t, s in zip(data["front"], data["summaries"])}
    # a line above the table, not its title: rich wraps a title to the table's width
    console.print(f"error x MACs x params front: {len(front)} of {data['evaluated']} evaluated sub-models "
                  "(validation error)")
    console.print(front_table(front, None, lambda arch: names[json.dumps(arch, sort_keys=True)], limit=12))
    console.print(f"demo took {result['seconds']} s")
