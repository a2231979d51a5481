"""How well each predictor of the predictor-assisted searcher ranks sub-models it has not seen.

On the search benchmark's trained families (digits, MNIST-5k), random distinct sub-models are
evaluated once (validation error, batch norm re-estimated); each predictor (ridge, random forest,
MLP) is fitted on n of them with the searcher's own features and ranks the rest. Reported: Kendall
tau between predicted and measured error on the held-out sub-models, median over 5 random splits,
with the range; and the tau of the parameter count alone (the capacity baseline every predictor
must beat to be of use).

    python bench/predictor_quality.py            # full run, writes bench/results/
    python bench/predictor_quality.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from onefit.cost.latency import environment, torch_threads
from onefit.search import PredictorSearch, family_problem
from onefit.search.predictor import PREDICTORS, make_predictor
from search_efficiency import OBJECTIVES, trained_family

RESULTS = Path(__file__).parent / "results"


def measure(task: str, archs: int, epochs: tuple[int, int], seed: int = 0, **model) -> dict:
    """``archs`` distinct random sub-models of the task's family, with their errors and features."""
    family, train_data, val, _ = trained_family(epochs, task=task, **model)
    problem = family_problem(family, val, calibration=train_data, objectives=OBJECTIVES)
    archs = min(archs, problem.space.size)
    rng, sampled = random.Random(seed), {}
    while len(sampled) < archs:
        arch = problem.space.sample(rng)
        sampled.setdefault(problem.space.key(arch), arch)
    archs = list(sampled.values())
    errors = [problem.compute(a, ["error"])["error"] for a in archs]
    searcher = PredictorSearch(seed=seed)
    searcher.setup(problem)
    return {"archs": archs, "error": errors, "features": searcher.features(archs).tolist(),
            "params": [problem.compute(a, ["params"])["params"] for a in archs]}


def rank_quality(data: dict, sizes: list[int], splits: int) -> dict:
    x, y = np.array(data["features"]), np.array(data["error"])
    rows = {}
    for kind in PREDICTORS:
        for n in sizes:
            taus = []
            for split in range(splits):
                order = np.random.default_rng(split).permutation(len(y))
                fit, held = order[:n], order[n:]
                predicted = make_predictor(kind, split).fit(x[fit], y[fit]).predict(x[held])
                taus.append(float(kendalltau(predicted, y[held])[0]))
            rows.setdefault(kind, {})[n] = taus
    capacity = float(kendalltau(-np.array(data["params"]), y)[0])
    return {"tau": rows, "params_tau": capacity}


def markdown(results: dict, command: str, seconds: float) -> str:
    env = environment()
    lines = ["# Predictor quality", "",
             f"`{command}` on {env['cpu']}, torch {env['torch']}; took {seconds / 60:.0f} min.", "",
             "Kendall tau between predicted and measured validation error on held-out sub-models "
             "(median over splits, range in brackets), each predictor fitted on n sub-models:", ""]
    for task, r in results.items():
        sizes = list(next(iter(r["tau"].values())))
        lines += [f"## {task} ({r['measured']} sub-models measured; parameter count alone: tau "
                  f"{r['params_tau']:.2f})", "",
                  "| predictor | " + " | ".join(f"n = {n}" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for kind, by_n in r["tau"].items():
            cells = [f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})" for t in by_n.values()]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny family, 30 sub-models, 2 splits")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        tasks = {"digits": dict(archs=30, epochs=(1, 1), widths=(8, 16), blocks=(1, 1))}
        sizes, splits = [10, 20], 2
    else:
        tasks = {"digits": dict(archs=800, epochs=(10, 20)), "mnist5k": dict(archs=1000, epochs=(10, 20))}
        sizes, splits = [20, 50, 100, 200], 5
    started, results = time.perf_counter(), {}
    with torch_threads(1):  # small convolutions: threads only add hand-offs on a shared 2-core machine
        for task, settings in tasks.items():
            data = measure(task, **settings)
            results[task] = {"measured": len(data["error"]), **rank_quality(data, sizes, splits)}
            print(task, json.dumps(results[task]["tau"]), flush=True)
    seconds = time.perf_counter() - started
    command = "python bench/predictor_quality.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictor_quality.json").write_text(json.dumps({"command": command, "seconds": round(seconds, 1),
                                                               "results": results}, indent=1))
    text = markdown(results, command, seconds)
    (args.out / "predictor_quality.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
