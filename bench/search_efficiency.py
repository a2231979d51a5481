"""How many evaluations each searcher needs: hypervolume against evaluations, 5 seeds each.

On the digits ResNet family, and with ``--task mnist5k`` on a ResNet for the 28x28 MNIST images
(each pre-trained 10 epochs, then 20 epochs of SortedNet on the training split minus a
validation split), every searcher minimises validation error x MACs x params:
random search, NSGA-II, predictor-assisted (LINAS-style), N2N reinforcement learning and
DeepArchitect's MCTS, each with a budget of 200 distinct sub-models, seeds 0-4. Evaluations are
deterministic (batch norm re-estimated on the same 10 training batches), so a sub-model measured
once is looked up when another run proposes it: each run still counts every distinct sub-model it
proposes as one evaluation.

Hypervolume: each objective scaled to [0, 1] between an ideal and a reference point (error 0 to
10 %, MACs and params from the smallest to the largest sub-model of the space); a sub-model worse
than 10 % error counts for nothing.

    python bench/search_efficiency.py            # full run, writes bench/results/
    python bench/search_efficiency.py --task mnist5k
    python bench/search_efficiency.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import onefit
from onefit.cost.latency import environment, torch_threads
from onefit.data import digits, mnist5k, validation_split
from onefit.search import SEARCHERS, Front, Metric, Problem, Trial, family_problem, search
from onefit.train import SortedNetConfig, SortedNetRecipe, train, train_plain

RESULTS = Path(__file__).parent / "results"
OBJECTIVES = ("error", "macs", "params")


TASKS = {"digits": digits, "mnist5k": mnist5k}
MODELS = {"digits": dict(widths=(32, 64), blocks=(3, 3)), "mnist5k": dict(widths=(16, 32), blocks=(2, 2), stem_stride=2)}


def trained_family(epochs: tuple[int, int], seed: int = 0, config: onefit.ElasticConfig | None = None,
                   task: str = "digits", **model):
    """A ResNet family (the demo's on digits) trained without the validation split."""
    torch.manual_seed(seed)
    train_all, test = TASKS[task](batch_size=64, seed=seed)
    train_data, val = validation_split(train_all, seed=seed)
    model = onefit.zoo.resnet(in_channels=1, classes=10, **(model or MODELS[task]))
    train_plain(model, train_data, epochs[0], progress=False)
    family = onefit.sort_(onefit.elasticize(model, (next(iter(test))[0][:1],), config))
    optimizer = torch.optim.Adam(family.parameters(), lr=3e-3)
    train(family, train_data, SortedNetRecipe(SortedNetConfig(seed=seed)), epochs=epochs[1], optimizer=optimizer,
          progress=False)
    return family, train_data, val, test


def memoized(problem: Problem) -> Problem:
    """The same problem, each arch's expensive metrics measured once across all runs."""
    cache: dict[str, dict[str, float]] = {}

    def lookup(name):
        def fn(arch):
            key = problem.key(arch)
            if key not in cache:
                cache[key] = problem.compute(arch, [n for n, m in problem.metrics.items() if not m.cheap])
            return cache[key][name]
        return fn

    metrics = {n: m if m.cheap else Metric(lookup(n)) for n, m in problem.metrics.items()}
    return Problem(problem.space, metrics, problem.objectives, problem.constraints, problem.canonical)


def box(problem: Problem, max_error: float) -> tuple[dict, dict]:
    """Ideal and reference points of the hypervolume."""
    low, high = problem.space.min(), problem.space.max()
    ideal = {"error": 0.0, **problem.compute(low, ["macs", "params"])}
    reference = {"error": max_error, **problem.compute(high, ["macs", "params"])}
    return ideal, reference


def curve(trials, checkpoints, ideal, reference) -> list[float]:
    return [Front(trials[:n], OBJECTIVES).hypervolume(reference, ideal) for n in checkpoints]


def hypervolume_of(values: list, ideal: dict, reference: dict) -> float:
    trials = [Trial({}, tuple(v)) for v in values if v is not None]
    return Front(trials, OBJECTIVES).hypervolume(reference, ideal)


def first_reaching(hv: list[float], checkpoints: list[int], target: float) -> int | None:
    return next((n for n, v in zip(checkpoints, hv) if v >= target), None)


def run(budget: int, seeds: list[int], epochs: tuple[int, int], searchers: list[str], max_error: float = 0.1,
        task: str = "digits", **model) -> dict:
    started = time.perf_counter()
    family, train_data, val, _ = trained_family(epochs, task=task, **model)
    problem = memoized(family_problem(family, val, calibration=train_data, objectives=OBJECTIVES))
    ideal, reference = box(problem, max_error)
    # the smallest and largest archs, which NSGA-II and the predictor-assisted searcher evaluate first
    extremes = [list(problem.evaluate(a).values) for a in (problem.space.min(), problem.space.max())]
    checkpoints = sorted({*range(10, budget + 1, 10), budget})
    runs = {}
    for name in searchers:
        for seed in seeds:
            t0 = time.perf_counter()
            front = search(problem, SEARCHERS[name](seed=seed), budget=budget, progress=False)
            runs.setdefault(name, []).append({
                "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                "hypervolume": curve(front.evaluated, checkpoints, ideal, reference),
                "front": [t.to_json() for t in front],
                "values": [t.values for t in front.evaluated]})  # in evaluation order, None if failed
            print(f"{name:7s} seed {seed}: hypervolume {runs[name][-1]['hypervolume'][-1]:.4f} "
                  f"({runs[name][-1]['seconds']} s)", flush=True)
    return {"task": task, "extremes": extremes, "checkpoints": checkpoints, "ideal": ideal, "reference": reference, "runs": runs,
            "space_size": family.space.size, "seconds": round(time.perf_counter() - started, 1)}


def summarize(result: dict) -> dict:
    checkpoints, runs = result["checkpoints"], result["runs"]
    at = {n: checkpoints.index(n) for n in checkpoints}
    median = {name: [statistics.median(r["hypervolume"][i] for r in rs) for i in range(len(checkpoints))]
              for name, rs in runs.items()}
    summary = {"median_hypervolume": median}
    if "random" in runs and "linas" in runs:
        budget = checkpoints[-1]
        target = median["random"][-1]
        reach = [first_reaching(r["hypervolume"], checkpoints, target) for r in runs["linas"]]
        summary["target"] = {
            "random_at_budget": target, "budget": budget,
            "linas_at_50": median["linas"][at[50]] if 50 in at else None,
            "linas_evaluations_to_reach": reach,
            "median_evaluations_to_reach": statistics.median(r if r is not None else float("inf") for r in reach),
        }
        # random search is not told to try the extremes; given them (in place of its last two draws) it
        # is a stronger baseline: the smallest arch alone holds much of the hypervolume
        seeded = statistics.median(hypervolume_of(r["values"][: budget - 2] + result["extremes"], result["ideal"],
                                                  result["reference"]) for r in runs["random"])
        reach = [first_reaching(r["hypervolume"], checkpoints, seeded) for r in runs["linas"]]
        summary["target"].update({
            "random_with_extremes_at_budget": seeded, "linas_evaluations_to_reach_seeded": reach,
            "median_evaluations_to_reach_seeded": statistics.median(r if r is not None else float("inf") for r in reach),
        })
    return summary


def plot(result: dict, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    x = result["checkpoints"]
    for name, rs in result["runs"].items():
        lo = [min(r["hypervolume"][i] for r in rs) for i in range(len(x))]
        hi = [max(r["hypervolume"][i] for r in rs) for i in range(len(x))]
        line, = ax.plot(x, summary["median_hypervolume"][name], label=name)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="evaluations", ylabel="hypervolume (error x MACs x params)",
           title=f"{result['task']} ResNet family: median and range over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict, summary: dict, command: str) -> str:
    env = environment()
    x = result["checkpoints"]
    shown = [n for n in (10, 25, 50, 100, 150, 200) if n in x]
    lines = [
        f"# Search efficiency: {result['task']}", "",
        f"`{command}` on {env['cpu']}, torch {env['torch']}; {result['task']} ResNet family "
        f"({result['space_size']:,} sub-models), objectives validation error x MACs x params, "
        f"{len(next(iter(result['runs'].values())))} seeds; took {result['seconds'] / 60:.0f} min.", "",
        "Median hypervolume over seeds (min-max in brackets) after n evaluations:", "",
        "| searcher | " + " | ".join(f"n = {n}" for n in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for name, rs in result["runs"].items():
        cells = []
        for n in shown:
            values = [r["hypervolume"][x.index(n)] for r in rs]
            cells.append(f"{statistics.median(values):.4f} ({min(values):.4f}-{max(values):.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "target" in summary:
        t = summary["target"]
        met = t["median_evaluations_to_reach"] <= 50
        at_50 = "n/a" if t["linas_at_50"] is None else f"{t['linas_at_50']:.4f}"
        lines += ["", f"- random search's median hypervolume at {t['budget']} evaluations: **{t['random_at_budget']:.4f}**; "
                  f"predictor-assisted at 50: **{at_50}**",
                  f"- evaluations the predictor-assisted searcher needs to reach it, per seed: {t['linas_evaluations_to_reach']}"
                  f" (median **{t['median_evaluations_to_reach']}**; target <= 50: {'met' if met else 'missed'})",
                  f"- random search given the smallest and largest archs (which NSGA-II and the predictor-assisted "
                  f"searcher start from) reaches **{t['random_with_extremes_at_budget']:.4f}** at {t['budget']}; the "
                  f"predictor-assisted searcher reaches that after {t['linas_evaluations_to_reach_seeded']} evaluations "
                  f"(None: not within {t['budget']}; median **{t['median_evaluations_to_reach_seeded']}**; "
                  f"{'met' if t['median_evaluations_to_reach_seeded'] <= 50 else 'missed'} against this stronger baseline)"]
    lines += ["", f"![hypervolume against evaluations]({stem_for(result['task'])}.png)", ""]
    return "\n".join(lines)


def stem_for(task: str) -> str:
    return "search_efficiency" if task == "digits" else f"search_efficiency_{task}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budget, 2 seeds, 1 epoch")
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--from-json", type=Path, help="re-render the table and plot from a saved JSON, no run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = (dict(budget=12, seeds=[0], epochs=(1, 1), max_error=1.0, widths=(8, 16), blocks=(1, 1)) if args.quick
                else dict(budget=200, seeds=[0, 1, 2, 3, 4], epochs=(10, 20)))
    settings["task"] = args.task
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        result = {k: saved[k] for k in ("task", "extremes", "checkpoints", "ideal", "reference", "runs", "space_size",
                                        "seconds")}
    else:
        with torch_threads(1):  # small convolutions: threads only add hand-offs on a shared 2-core machine
            result = run(searchers=list(SEARCHERS), **settings)
    summary = summarize(result)
    args.out.mkdir(parents=True, exist_ok=True)
    command = saved["command"] if args.from_json else "python bench/search_efficiency.py" + \
        (" --quick" if args.quick else "") + (f" --task {args.task}" if args.task != "digits" else "")
    stem = args.out / stem_for(args.task)
    stem.with_suffix(".json").write_text(json.dumps({**result, **summary, "command": command}, indent=1))
    plot(result, summary, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(result, summary, command))
    print(markdown(result, summary, command))
    return {**result, **summary}


if __name__ == "__main__":
    main()
