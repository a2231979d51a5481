"""Rank as an elastic dimension: ordered-rank training, Trained Rank Pruning, SVD truncation, width.

For each task (an MLP and a small CNN, on the digits and on 5,000 28x28 MNIST images) and seed:
  dense      the model trained normally (the reference)
  svd        its layers factorized by SVD and truncated to each rank, no retraining
  ordered    the factorized family fine-tuned with ordered-rank training (Maestro: nested ranks
             per layer, hierarchical group lasso, progressive shrinking), then truncated
  trp        the factorized family fine-tuned with Trained Rank Pruning (energy truncation every
             50 steps plus the nuclear-norm sub-gradient), then truncated; ranks above the rank
             TRP kept are capped at it
  width      a model whose hidden widths give about the same parameters, trained alone as long
             as the dense one
at rank fractions of every factorized layer (first convolution and classifier stay dense), and at
the largest sub-model of the ordered family within a third of the dense MACs.

    python bench/lowrank.py            # full run, writes bench/results/lowrank.{json,md}
    python bench/lowrank.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

import onefit
from onefit.cost.latency import environment, torch_threads
from onefit.data import digits, mnist5k
from onefit.train import OrderedRankConfig, OrderedRankRecipe, TRPConfig, TRPRecipe, evaluate, train_plain

RESULTS = Path(__file__).parent / "results"
FRACTIONS = (0.125, 0.25, 0.5, 1.0)
METHODS = ("svd", "ordered", "trp", "width")


def mlp(pixels: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def cnn(stride: int, width: int = 32) -> nn.Module:
    """Three 3x3 convolutions (the first strided on 28x28), global average pooling, a classifier."""
    return nn.Sequential(nn.Conv2d(1, width // 2, 3, stride=stride, padding=1), nn.ReLU(),
                         nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


TASKS = {  # name: (data, build(width), full width, layers kept dense)
    "mlp-digits": (digits, lambda w: mlp(64, w), 256, ("5",)),
    "mlp-mnist": (mnist5k, lambda w: mlp(784, w), 256, ("5",)),
    "cnn-digits": (digits, lambda w: cnn(1, w), 32, ("0", "8")),
    "cnn-mnist": (mnist5k, lambda w: cnn(2, w), 32, ("0", "8")),
}


def rank_config(dense_layers) -> onefit.ElasticConfig:
    return onefit.ElasticConfig(width=(1.0,), depth=False, rank=FRACTIONS[:-1],
                                rank_layers={name: (1.0,) for name in dense_layers})


def rank_arch(family, fraction: float) -> dict:
    """Every rank dimension at the largest choice within ``fraction`` of its full rank (capped by shrinking)."""
    arch = {}
    for dim in family.space:
        full = family.module.get_submodule(dim.name.removeprefix("rank:")).full_rank
        arch[dim.name] = max([c for c in dim.choices if c <= round(fraction * full)] or [dim.choices[0]])
    return arch


def width_for(build, params: int, full: int) -> int:
    """The hidden width whose plain model has the parameter count nearest ``params``."""
    return min(range(2, full + 1, 2), key=lambda w: abs(sum(p.numel() for p in build(w).parameters()) - params))


def fine_tune(dense, example, config, recipe, data, epochs: int) -> onefit.Family:
    family = onefit.elasticize(dense, (example,), config)
    optimizer = torch.optim.Adam(family.parameters(), lr=1e-3)
    onefit.train(family, data, recipe, epochs=epochs, optimizer=optimizer, progress=False)
    if isinstance(recipe, TRPRecipe):
        recipe.truncate_(family)  # leave every prefix the SVD of the trained product
    return family


def run_task(name: str, seed: int, epochs: int, tune_epochs: int, quick: bool = False) -> dict:
    load, build, full_width, dense_layers = TASKS[name]
    train_data, test_data = load(batch_size=64, seed=seed)
    example = next(iter(test_data))[0][:1]
    torch.manual_seed(seed)
    dense = train_plain(build(full_width), train_data, epochs, lr=3e-3, progress=False)
    dense_acc = evaluate(dense, test_data)
    config = rank_config(dense_layers)
    truncated = onefit.elasticize(dense, (example,), config)
    ordered = fine_tune(dense, example, config, OrderedRankRecipe(OrderedRankConfig(seed=seed)), train_data,
                        tune_epochs)
    trp = fine_tune(dense, example, config, TRPRecipe(TRPConfig(seed=seed)), train_data, tune_epochs)
    dense_costs = onefit.costs(truncated, truncated.space.max())
    points = [(f"{f:.1%}", f) for f in (FRACTIONS[:2] if quick else FRACTIONS)] + [("≤ 1/3 MACs", None)]
    rows = []
    for label, fraction in points:
        arch = rank_arch(truncated, fraction) if fraction else onefit.largest_within(ordered, macs=dense_costs["macs"] / 3)
        row = {"rank": label, "arch": arch, **{k: onefit.costs(truncated, arch)[k] for k in ("params", "macs")}}
        row["svd"] = evaluate(truncated.extract(arch), test_data)
        row["ordered"] = evaluate(ordered.extract(ordered.space.complete(_capped(ordered, arch))), test_data)
        trp_arch = trp.space.complete(_capped(trp, arch))
        row["trp"], row["trp_macs"] = evaluate(trp.extract(trp_arch), test_data), onefit.costs(trp, trp_arch)["macs"]
        width = width_for(build, row["params"], full_width)
        torch.manual_seed(seed)
        row["width"] = dense_acc if width == full_width else evaluate(
            train_plain(build(width), train_data, epochs, lr=3e-3, progress=False), test_data)
        row["width_channels"] = width
        rows.append(row)
        print(f"  {name} seed {seed} rank {label}: macs {row['macs']:,} svd {row['svd']:.1f} ordered "
              f"{row['ordered']:.1f} trp {row['trp']:.1f} width({width}) {row['width']:.1f}", flush=True)
    return {"task": name, "seed": seed, "dense_accuracy": dense_acc, "dense_params": dense_costs["params"],
            "dense_macs": dense_costs["macs"], "ordered_space": ordered.space.to_json(),
            "trp_space": trp.space.to_json(), "rows": rows}


def _capped(family, arch: dict) -> dict:
    """``arch`` with each rank lowered to the largest choice the (shrunk) family still has."""
    return {k: max([c for c in family.space[k].choices if c <= v] or [family.space[k].choices[0]])
            for k, v in arch.items()}


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {sd:.1f}"


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        mine = [r for r in runs if r["task"] == task]
        third = [r["rows"][-1] for r in mine]  # the largest ordered sub-model within a third of the MACs
        dense = statistics.fmean(r["dense_accuracy"] for r in mine)
        summary[task] = {
            "dense_accuracy": dense,
            "third_macs_share": statistics.fmean(row["macs"] / r["dense_macs"] for row, r in zip(third, mine)),
            **{f"third_{m}_minus_dense": statistics.fmean(row[m] for row in third) - dense for m in METHODS},
        }
    return summary


def markdown(result: dict) -> str:
    lines = [f"# Low rank\n\n`{result['command']}` on {result['machine']}; dense models {result['epochs']} epochs, "
             f"fine-tuning {result['tune_epochs']} epochs; seeds {result['seeds']}. Accuracy in %, mean ± std over "
             "seeds; params and MACs of the rank sub-model (TRP's own MACs where its ranks were capped lower).\n"]
    for task, s in result["summary"].items():
        mine = [r for r in result["runs"] if r["task"] == task]
        lines += [f"\n## {task}\n", f"Dense: {spread([r['dense_accuracy'] for r in mine])}, "
                  f"{mine[0]['dense_params']:,} params, {mine[0]['dense_macs']:,} MACs.\n",
                  "| rank | params | MACs | SVD truncation | ordered rank | TRP | TRP MACs | width (channels) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for i, row in enumerate(mine[0]["rows"]):
            col = {m: spread([r["rows"][i][m] for r in mine]) for m in METHODS}
            trp_macs = statistics.fmean(r["rows"][i]["trp_macs"] for r in mine)
            lines.append(f"| {row['rank']} | {row['params']:,} | {row['macs']:,} | {col['svd']} | {col['ordered']} | "
                         f"{col['trp']} | {trp_macs:,.0f} | {col['width']} ({row['width_channels']}) |")
        met = "met" if s["third_ordered_minus_dense"] >= -1.0 else "missed"
        lines.append(f"\n- largest ordered-rank sub-model within 1/3 of the dense MACs ({s['third_macs_share']:.0%} "
                     f"of them): **{s['third_ordered_minus_dense']:+.2f}** points against dense (target ≥ −1.0"
                     f"{', MLP' if task.startswith('mlp') else ', reported only'}: {met}); SVD truncation "
                     f"**{s['third_svd_minus_dense']:+.2f}**, TRP **{s['third_trp_minus_dense']:+.2f}**, width at "
                     f"equal params **{s['third_width_minus_dense']:+.2f}**")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--tune-epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed, 2 rank points, mlp-digits only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="lowrank", help="file names of the results (to keep runs of other tasks)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.epochs, args.tune_epochs = ["mlp-digits"], [0], 1, 1
    with torch_threads(1):  # the machine is shared; one thread per process avoids over-subscription
        runs = [run_task(t, s, args.epochs, args.tune_epochs, args.quick) for t in args.tasks for s in args.seeds]
    env = environment()
    result = {"command": "python bench/lowrank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{env['cpu']} ({env['cores']} cores, 1 thread), torch {env['torch']}",
              "environment": env, "epochs": args.epochs, "tune_epochs": args.tune_epochs, "seeds": args.seeds,
              "runs": runs, "summary": summarize(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{args.stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
