"""Nested (SortedNet) training against training each sub-model alone, and against truncation.

For each task and seed, side by side in one run:
  full   the full model trained normally (the reference, and the wall-time unit)
Every model is evaluated after its batch-norm statistics are re-estimated on 20 training batches.
  (a)    the family trained from scratch with SortedNet (sandwich of 4, in-place distillation),
         each sub-model extracted
  (a')   the same with labels only (no distillation)
  (b)    each sub-model's architecture trained alone, fresh init, same epochs, optimizer and
         cosine schedule
  (c)    prefix truncation of the normally trained full model (importance-sorted first, batch
         norm re-estimated, no retraining)
over a width x depth grid of 8 sub-models.

    python bench/nested_vs_individual.py            # full run, writes bench/results/
    python bench/nested_vs_individual.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import onefit
from onefit.data import digits, mnist5k
from onefit.train import SortedNetConfig, evaluate, recalibrate_bn, train_plain
from onefit.zoo import resnet

RESULTS = Path(__file__).parent / "results"
TASKS = {
    # name: (data, model kwargs)
    "digits": (digits, dict(in_channels=1, widths=(32, 64), blocks=(3, 3))),
    "mnist5k": (mnist5k, dict(in_channels=1, widths=(16, 32), blocks=(2, 2), stem_stride=2)),
}
WIDTHS = (0.25, 0.5, 0.75, 1.0)
VARIANTS = ("nested", "nested_labels")


def grid_arch(space: onefit.Space, width: float, deepest: bool) -> dict:
    """Every width group at the choice nearest ``width`` x its full size; every stage shallowest or deepest."""
    arch = {}
    for dim in space:
        if dim.kind == "width":
            arch[dim.name] = min(dim.choices, key=lambda c: abs(c - width * dim.choices[-1]))
        else:
            arch[dim.name] = dim.choices[-1] if deepest else dim.choices[0]
    return arch


def fresh(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-initialise every layer with torch's defaults for its own (smaller) shape."""
    torch.manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module


def run_task(name: str, seed: int, epochs: int, archs_per_task: int, small: bool = False) -> dict:
    load, kwargs = TASKS[name]
    if small:  # the smoke run: a tiny model, so the test suite stays fast
        kwargs = {**kwargs, "widths": (8, 16), "blocks": (2, 2)}
    train_data, test_data = load(batch_size=64, seed=seed)
    example = next(iter(test_data))[0][:1]

    # Warm up the kernels once so that neither timed run pays the process's first-call costs.
    train_plain(resnet(**kwargs), list(train_data)[:3], 1, progress=False)
    torch.manual_seed(seed)
    full = resnet(**kwargs)
    t0 = time.perf_counter()
    train_plain(full, train_data, epochs, lr=3e-3, progress=False)
    full_seconds = time.perf_counter() - t0
    # Every model is evaluated with exactly re-estimated batch-norm statistics, so no method
    # wins or loses by its running averages alone.
    full_acc = evaluate(recalibrate_bn(full, train_data), test_data)

    families, family_seconds = {}, {}
    for variant, distill in (("nested", "inplace"), ("nested_labels", "none")):
        torch.manual_seed(seed)
        family = onefit.elasticize(resnet(**kwargs), (example,))
        recipe = onefit.SortedNetRecipe(SortedNetConfig(distill=distill, seed=seed))
        optimizer = torch.optim.Adam(family.parameters(), lr=3e-3)
        t0 = time.perf_counter()
        onefit.train(family, train_data, recipe, epochs=epochs, optimizer=optimizer, progress=False)
        family_seconds[variant], families[variant] = time.perf_counter() - t0, family

    truncated = onefit.sort_(onefit.elasticize(full, (example,)))
    rows = []
    grid = [(w, d) for d in (False, True) for w in WIDTHS][-archs_per_task:]
    for width, deepest in grid:
        arch = grid_arch(family.space, width, deepest)
        nested = {v: evaluate(recalibrate_bn(f.extract(arch), train_data), test_data) for v, f in families.items()}
        if width == 1.0 and deepest:
            alone = full_acc  # the full architecture trained alone is the reference model
        else:
            sub = fresh(family.extract(arch), seed)
            train_plain(sub, train_data, epochs, lr=3e-3, progress=False)
            alone = evaluate(recalibrate_bn(sub, train_data), test_data)
        cut = evaluate(recalibrate_bn(truncated.extract(arch), train_data), test_data)
        rows.append({"width": width, "depth": "max" if deepest else "min", **onefit.costs(family, arch),
                     **nested, "alone": alone, "truncated": cut})
        print(f"  {name} seed {seed} w={width} d={'max' if deepest else 'min'}: nested {nested['nested']:.1f} "
              f"labels-only {nested['nested_labels']:.1f} alone {alone:.1f} truncated {cut:.1f}", flush=True)
    return {"task": name, "seed": seed, "full_accuracy": full_acc, "full_seconds": full_seconds,
            "family_seconds": family_seconds["nested"], "family_labels_seconds": family_seconds["nested_labels"],
            "rows": rows}


def wall_time_ratios(name: str, rounds: int, small: bool = False) -> list[float]:
    """Family epoch time over full-model epoch time, measured back to back ``rounds`` times, so
    that whatever else the machine does weighs on both sides alike."""
    load, kwargs = TASKS[name]
    if small:
        kwargs = {**kwargs, "widths": (8, 16), "blocks": (2, 2)}
    train_data, test_data = load(batch_size=64, seed=0)
    example = next(iter(test_data))[0][:1]
    train_plain(resnet(**kwargs), list(train_data)[:3], 1, progress=False)  # warm-up
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        train_plain(resnet(**kwargs), train_data, 1, progress=False)
        full = time.perf_counter() - t0
        family = onefit.elasticize(resnet(**kwargs), (example,))
        t0 = time.perf_counter()
        onefit.train(family, train_data, onefit.SortedNetRecipe(), epochs=1, progress=False)
        ratios.append((time.perf_counter() - t0) / full)
    return ratios


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def summarize(runs: list[dict], ratios_by_task: dict[str, list[float]]) -> dict:
    summary = {}
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        ratios = ratios_by_task[task]
        summary[task] = {
            **{f"median_gap_alone_minus_{v}": statistics.median(row["alone"] - row[v] for r in mine for row in r["rows"])
               for v in VARIANTS},
            **{f"largest_{v}_minus_full": statistics.median(r["rows"][-1][v] - r["full_accuracy"] for r in mine)
               for v in VARIANTS},
            "family_over_full_wall_time": statistics.median(ratios),
            "wall_time_ratio_range": [min(ratios), max(ratios)],
            "wall_time_ratios": ratios,
        }
    return summary


def markdown(result: dict) -> str:
    timing = f" Wall times: `{result['timing_command']}`." if "timing_command" in result else ""
    lines = [f"# Nested vs individual training\n\n`{result['command']}` on {result['machine']}, "
             f"{result['epochs']} epochs, seeds {result['seeds']}. Accuracy in %, mean ± std over seeds.{timing}\n"]
    for task, s in result["summary"].items():
        lines.append(f"\n## {task}\n")
        lines.append("| width | depth | params | MACs | (a) nested, in-place KD | (a') nested, labels only "
                     "| (b) alone | (c) truncated |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        mine = [r for r in result["runs"] if r["task"] == task]
        for i, row in enumerate(mine[0]["rows"]):
            col = {k: spread([r["rows"][i][k] for r in mine]) for k in (*VARIANTS, "alone", "truncated")}
            lines.append(f"| {row['width']:.0%} | {row['depth']} | {row['params']:,} | {row['macs']:,} | "
                         f"{col['nested']} | {col['nested_labels']} | {col['alone']} | {col['truncated']} |")
        full = spread([r["full_accuracy"] for r in mine])
        lines.append(f"\nFull model trained normally: {full}.\n")
        for v, label in (("nested", "a"), ("nested_labels", "a'")):
            lines.append(f"- median gap (b − {label}): **{s[f'median_gap_alone_minus_{v}']:+.2f}** points "
                         f"(target ≤ 1.0); largest sub-model of ({label}) − full model: "
                         f"**{s[f'largest_{v}_minus_full']:+.2f}** points (target ≥ −0.5)")
        lo, hi = s["wall_time_ratio_range"]
        lines.append(f"- family (a) wall time ÷ full model, per epoch, median of {len(s['wall_time_ratios'])} "
                     f"back-to-back rounds: **{s['family_over_full_wall_time']:.2f}×** (range {lo:.2f}–{hi:.2f}; "
                     f"target ≤ 3×)")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "nested_vs_individual.json").write_text(json.dumps(result, indent=1))
    (out / "nested_vs_individual.md").write_text(markdown(result))
    print(markdown(result))


def retime(out: Path) -> dict:
    """Wall-time ratios measured alone on a quiet machine, merged into an earlier full run."""
    result = json.loads((out / "nested_vs_individual.json").read_text())
    tasks = sorted({r["task"] for r in result["runs"]})
    result["summary"] = summarize(result["runs"], {task: wall_time_ratios(task, 5) for task in tasks})
    result["timing_command"] = "python bench/nested_vs_individual.py --timing-only"
    write(result, out)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed, 2 sub-models, digits only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timing-only", action="store_true",
                        help="re-measure only the wall-time ratios, into the results already in --out")
    args = parser.parse_args(argv)
    if args.timing_only:
        return retime(args.out)
    archs = 8
    if args.quick:
        args.tasks, args.seeds, args.epochs, archs = ["digits"], [0], 1, 2
    runs = [run_task(task, seed, args.epochs, archs, args.quick) for task in args.tasks for seed in args.seeds]
    ratios = {task: wall_time_ratios(task, 1 if args.quick else 5, args.quick) for task in args.tasks}
    result = {
        "command": "python bench/nested_vs_individual.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "runs": runs,
        "summary": summarize(runs, ratios),
    }
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
