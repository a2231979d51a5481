"""Nested (SortedNet) training against training each sub-model alone, and against truncation.

For each task and seed, side by side in one run:
  full   the full model trained normally (the reference, and the wall-time unit)
Every model is evaluated after its batch-norm statistics are re-estimated on 20 training batches.
  (a)    the family trained from scratch with SortedNet (sandwich of 4, in-place distillation),
         each sub-model extracted
  (a')   the same with labels only (no distillation)
  (a'')  the family trained with Once-for-All progressive shrinking at the same number of steps
         and the same sandwich (the full network alone, then each dimension kind released in
         turn, the cosine learning rate restarted at each, the channels sorted by importance when
         the widths are released, in-place distillation), the steps split evenly over its phases
  (d)    as (a), distilled from the full model trained normally (an external teacher) instead
         of in place
  (b)    each sub-model's architecture trained alone, fresh init, same epochs, optimizer and
         cosine schedule
  (c)    prefix truncation of the normally trained full model (importance-sorted first, batch
         norm re-estimated, no retraining)
over a width x depth grid of 8 sub-models.

    python bench/nested_vs_individual.py            # full run, writes bench/results/
    python bench/nested_vs_individual.py --quick    # a smoke run (used by the tests)

Targets (issue 18): median gap (alone - family) <= 0.5 points on both tasks with whichever recipe
is best; the largest sub-model within 0.3 points of the full model; family cost <= 3x one model's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import onefit
from onefit.data import digits, mnist5k
from onefit.train import (ProgressiveShrinkingConfig, ProgressiveShrinkingRecipe, SortedNetConfig, evaluate,
                          recalibrate_bn, train_plain)
from onefit.zoo import resnet

RESULTS = Path(__file__).parent / "results"
TASKS = {
    # name: (data, model kwargs)
    "digits": (digits, dict(in_channels=1, widths=(32, 64), blocks=(3, 3))),
    "mnist5k": (mnist5k, dict(in_channels=1, widths=(16, 32), blocks=(2, 2), stem_stride=2)),
}
WIDTHS = (0.25, 0.5, 0.75, 1.0)
VARIANTS = ("nested", "nested_labels", "progressive", "teacher")
LABELS = {"nested": "a", "nested_labels": "a'", "progressive": "a''", "teacher": "d"}
TITLES = {"nested": "nested, in-place KD", "nested_labels": "nested, labels only", "progressive": "progressive shrinking",
          "teacher": "nested, KD from the full model"}
TIMED = ("nested", "progressive", "teacher")  # labels-only SortedNet costs what SortedNet costs, less the KL term
GAP_TARGET, LARGEST_TARGET, COST_TARGET = 0.5, -0.3, 3.0  # issue 18


def make_recipe(variant: str, family, steps: int, seed: int):
    """The recipe of ``variant``; progressive shrinking splits ``steps`` evenly over its phases."""
    if variant == "progressive":
        phases = len(ProgressiveShrinkingRecipe().schedule(family))
        return ProgressiveShrinkingRecipe(ProgressiveShrinkingConfig(phase_steps=max(1, steps // phases), seed=seed))
    distill = {"nested": "inplace", "nested_labels": "none", "teacher": "teacher"}[variant]
    return onefit.SortedNetRecipe(SortedNetConfig(distill=distill, seed=seed))


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
    for variant in VARIANTS:
        torch.manual_seed(seed)
        family = onefit.elasticize(resnet(**kwargs), (example,))
        recipe = make_recipe(variant, family, epochs * len(train_data), seed)
        optimizer = torch.optim.Adam(family.parameters(), lr=3e-3)
        t0 = time.perf_counter()
        onefit.train(family, train_data, recipe, epochs=epochs, optimizer=optimizer, progress=False,
                     teacher=full if variant == "teacher" else None)
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
        print(f"  {name} seed {seed} w={width} d={'max' if deepest else 'min'}: "
              + " ".join(f"{v} {nested[v]:.1f}" for v in VARIANTS) + f" alone {alone:.1f} truncated {cut:.1f}",
              flush=True)
    return {"task": name, "seed": seed, "full_accuracy": full_acc, "full_seconds": full_seconds,
            "family_seconds": family_seconds, "rows": rows}


def wall_time_ratios(name: str, rounds: int, small: bool = False) -> dict[str, list[float]]:
    """Family epoch time over full-model epoch time, measured back to back ``rounds`` times, so
    that whatever else the machine does weighs on both sides alike: SortedNet ("nested"),
    progressive shrinking ("progressive") with its phases squeezed into the one epoch, so that the
    epoch holds each phase in the share it has in the full run, and SortedNet distilled from a
    full model ("teacher", its forward pass included; not the teacher's own training)."""
    load, kwargs = TASKS[name]
    if small:
        kwargs = {**kwargs, "widths": (8, 16), "blocks": (2, 2)}
    train_data, test_data = load(batch_size=64, seed=0)
    example = next(iter(test_data))[0][:1]
    train_plain(resnet(**kwargs), list(train_data)[:3], 1, progress=False)  # warm-up
    ratios = {v: [] for v in TIMED}
    for _ in range(rounds):
        teacher = resnet(**kwargs)
        t0 = time.perf_counter()
        train_plain(teacher, train_data, 1, progress=False)
        full = time.perf_counter() - t0
        for variant in ratios:
            family = onefit.elasticize(resnet(**kwargs), (example,))
            recipe = make_recipe(variant, family, len(train_data), 0)
            t0 = time.perf_counter()
            onefit.train(family, train_data, recipe, epochs=1, progress=False,
                         teacher=teacher if variant == "teacher" else None)
            ratios[variant].append((time.perf_counter() - t0) / full)
    return ratios


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def median_range(values: list[float]) -> tuple[float, list[float]]:
    nan = float("nan")
    return (statistics.median(values), [min(values), max(values)]) if values else (nan, [nan, nan])


def summarize(runs: list[dict], ratios_by_task: dict[str, dict[str, list[float]]]) -> dict:
    summary = {}
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        ratios = ratios_by_task[task]
        summary[task] = {
            **{f"median_gap_alone_minus_{v}": statistics.median(row["alone"] - row[v] for r in mine for row in r["rows"])
               for v in VARIANTS},
            **{f"largest_{v}_minus_full": statistics.median(r["rows"][-1][v] - r["full_accuracy"] for r in mine)
               for v in VARIANTS},
            "over_full_wall_time": {v: median_range(ratios[v])[0] for v in TIMED},
            "wall_time_ratio_range": {v: median_range(ratios[v])[1] for v in TIMED},
            "wall_time_ratios": {v: ratios[v] for v in TIMED},
        }
        best = min(VARIANTS, key=lambda v: summary[task][f"median_gap_alone_minus_{v}"])
        summary[task]["best_recipe"] = best
    summary_targets(summary)
    return summary


def cost(s: dict, variant: str) -> float:
    """The wall-time ratio of ``variant``: labels-only SortedNet costs what SortedNet costs, less the KL term."""
    return s["over_full_wall_time"][variant if variant in TIMED else "nested"]


def summary_targets(summary: dict) -> None:
    """Issue 18's targets, met or missed, per task (the recipe with the smallest median gap) and
    over both tasks (one recipe meeting the gap target on every task)."""
    for task, s in summary.items():
        best = s["best_recipe"]
        s["targets"] = {
            "recipe": best,
            "median_gap_le_0.5": s[f"median_gap_alone_minus_{best}"] <= GAP_TARGET,
            "largest_within_0.3": s[f"largest_{best}_minus_full"] >= LARGEST_TARGET,
            "cost_le_3x": cost(s, best) <= COST_TARGET,
        }


def mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(result: dict) -> str:
    timing = f" Wall times: `{result['timing_command']}`." if "timing_command" in result else ""
    note = f"\n{result['note']}\n" if result.get("note") else ""
    lines = [f"# Nested vs individual training\n\n`{result['command']}` on {result['machine']}, "
             f"{result['epochs']} epochs, seeds {result['seeds']}. Accuracy in %, mean ± std over seeds.{timing}\n"
             f"{note}\n"
             f"(a'') progressive shrinking: the same number of steps as (a), each a sandwich of 4 (largest, "
             f"smallest, 2 random) over the dimensions released so far, with in-place distillation; the steps "
             f"split evenly over its phases (the full network alone, then depth, then width), the cosine learning "
             f"rate restarted at each phase, the channels sorted by importance (L1, the optimizer's state moved "
             f"with them) when the widths are released. (d): as (a), the "
             f"students distilled from the full model trained normally instead of from the largest sub-model; "
             f"its cost is the family's, not counting the teacher's own training (1× more, if it is not trained "
             f"already). Targets (issue 18): "
             f"median gap ≤ {GAP_TARGET} points on both tasks with whichever recipe is best; largest sub-model "
             f"within {-LARGEST_TARGET} points of the full model; family cost ≤ {COST_TARGET:.0f}× one model's.\n"]
    for task, s in result["summary"].items():
        lines.append(f"\n## {task}\n")
        lines.append("| width | depth | params | MACs | "
                     + " | ".join(f"({LABELS[v]}) {TITLES[v]}" for v in VARIANTS) + " | (b) alone | (c) truncated |")
        lines.append("|---|---|---:|---:|" + "---:|" * (len(VARIANTS) + 2))
        mine = [r for r in result["runs"] if r["task"] == task]
        for i, row in enumerate(mine[0]["rows"]):
            col = {k: spread([r["rows"][i][k] for r in mine]) for k in (*VARIANTS, "alone", "truncated")}
            lines.append(f"| {row['width']:.0%} | {row['depth']} | {row['params']:,} | {row['macs']:,} | "
                         + " | ".join(col[v] for v in VARIANTS) + f" | {col['alone']} | {col['truncated']} |")
        full = spread([r["full_accuracy"] for r in mine])
        lines.append(f"\nFull model trained normally: {full}.\n")
        for v in VARIANTS:
            label, gap, largest = LABELS[v], s[f"median_gap_alone_minus_{v}"], s[f"largest_{v}_minus_full"]
            lines.append(f"- ({label}) {TITLES[v]}: median gap (b − {label}) **{gap:+.2f}** points (target ≤ "
                         f"{GAP_TARGET}: {mark(gap <= GAP_TARGET)}); largest sub-model − full model **{largest:+.2f}** "
                         f"points (target ≥ −{-LARGEST_TARGET}: {mark(largest >= LARGEST_TARGET)})")
        for v in TIMED:
            label = f"({LABELS[v]}) {TITLES[v]}"
            lo, hi = s["wall_time_ratio_range"][v]
            ratio, rounds = s["over_full_wall_time"][v], len(s["wall_time_ratios"][v])
            lines.append(f"- family {label} wall time ÷ full model, per epoch, median of {rounds} back-to-back rounds: "
                         f"**{ratio:.2f}×** (range {lo:.2f}–{hi:.2f}; target ≤ {COST_TARGET:.0f}×: "
                         f"{mark(ratio <= COST_TARGET)})")
        t = s["targets"]
        lines.append(f"- best recipe by median gap: ({LABELS[t['recipe']]}) {TITLES[t['recipe']]}: gap "
                     f"{mark(t['median_gap_le_0.5'])}, largest {mark(t['largest_within_0.3'])}, cost "
                     f"{mark(t['cost_le_3x'])}")
    tasks = list(result["summary"])
    both = [v for v in VARIANTS if all(result["summary"][t][f"median_gap_alone_minus_{v}"] <= GAP_TARGET for t in tasks)]
    lines.append(f"\n## Targets over {' and '.join(tasks)}\n")
    lines.append(f"- median gap ≤ {GAP_TARGET} on every task: "
                 + (f"met by {', '.join(f'({LABELS[v]})' for v in both)}" if both else "**missed** by every recipe")
                 + "; per task, best: " + "; ".join(
                     f"{t} ({LABELS[result['summary'][t]['best_recipe']]}) "
                     f"{result['summary'][t]['median_gap_alone_minus_' + result['summary'][t]['best_recipe']]:+.2f}"
                     for t in tasks))
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


def merge(dirs: list[Path], out: Path, command: str, note: str) -> dict:
    """One result from runs made apart (tasks or seeds in separate processes, same epochs): runs
    concatenated, the wall-time rounds of every part pooled."""
    parts = [json.loads((d / "nested_vs_individual.json").read_text()) for d in dirs]
    if len({p["epochs"] for p in parts}) != 1:
        raise ValueError(f"merge: the parts ran different epochs: {[p['epochs'] for p in parts]}")
    runs = [r for p in parts for r in p["runs"]]
    ratios: dict[str, dict[str, list[float]]] = {}
    for p in parts:
        for task, s in p["summary"].items():
            mine = ratios.setdefault(task, {v: [] for v in TIMED})
            for v in TIMED:
                mine[v] += s["wall_time_ratios"][v]
    parts_line = "Parts: " + "; ".join(f"`{p['command']}`" for p in parts) + "."
    result = {"command": command, "machine": parts[0]["machine"], "epochs": parts[0]["epochs"],
              "seeds": sorted({r["seed"] for r in runs}), "note": " ".join(x for x in (note, parts_line) if x),
              "runs": runs, "summary": summarize(runs, ratios)}
    write(result, out)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed, 2 sub-models, digits only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timing-rounds", type=int, default=5, help="back-to-back wall-time rounds per task")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge the results in these folders into --out")
    parser.add_argument("--note", default="", help="a line for the markdown (what a reduced run left out)")
    parser.add_argument("--timing-only", action="store_true",
                        help="re-measure only the wall-time ratios, into the results already in --out")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.timing_only:
        return retime(args.out)
    if args.merge:
        return merge(args.merge, args.out, "python bench/nested_vs_individual.py "
                     + " ".join(argv if argv is not None else sys.argv[1:]), args.note)
    archs = 8
    if args.quick:
        args.tasks, args.seeds, args.epochs, archs = ["digits"], [0], 1, 2
    runs = [run_task(task, seed, args.epochs, archs, args.quick) for task in args.tasks for seed in args.seeds]
    rounds = 1 if args.quick else args.timing_rounds
    ratios = {task: wall_time_ratios(task, rounds, args.quick) if rounds else {v: [] for v in TIMED}
              for task in args.tasks}
    result = {
        "command": "python bench/nested_vs_individual.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "note": args.note,
        "runs": runs,
        "summary": summarize(runs, ratios),
    }
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
