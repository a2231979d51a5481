"""Joint architecture x precision search against "architecture first, then 8 bits everywhere".

One family of the digits ResNet, elasticized with a bit-width dimension per convolution and
Linear layer (4, 8 or 32 bits) beside width and depth, trained with SortedNet (the sandwich
samples bit policies too; the largest arch, at 32 bits, teaches in place). Then, on validation
error x weight bytes, with the predictor-assisted searcher and 200 evaluations each:

  joint       the whole space: width, depth and every layer's bits together;
  sequential  the architecture alone (every layer at 32 bits); then every layer of each arch on
              that front set to 8 bits and evaluated again (the usual "search, then quantize").

For each arch of the sequential 8-bit front: the smallest joint-front arch with no more error,
and the ratio of their sizes (< 1: the joint front is smaller at equal error). Seeds 0-2 of the
searcher on one trained family.

    python bench/joint_precision.py            # full run, writes bench/results/
    python bench/joint_precision.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


import onefit
from onefit.cost.latency import environment, torch_threads
from onefit.search import Front, PredictorSearch, Trial, family_problem, search
from onefit.space import Dimension, Space

sys.path.insert(0, str(Path(__file__).parent))
from search_efficiency import memoized, trained_family  # noqa: E402  (the same family recipe)

RESULTS = Path(__file__).parent / "results"
OBJECTIVES = ("error", "weight_bytes")


def at_full_precision(space: Space) -> Space:
    return Space([Dimension(d.name, d.kind, (32,)) if d.kind == "bits" else d for d in space])


def all_bits(arch: dict, bits: int) -> dict:
    return {k: bits if k.startswith("bits:") else v for k, v in arch.items()}


def compare(joint: Front, sequential: Front) -> list[dict]:
    """Per distinct point of the sequential front (archs that differ only where it does not matter,
    e.g. the width of a skipped block, count once): the smallest joint arch with no more error,
    and the size ratio."""
    rows = []
    for error, size in sorted({tuple(t.values) for t in sequential}):
        fits = [j for j in joint if j.values[0] <= error]
        best = min(fits, key=lambda j: j.values[1]) if fits else None
        rows.append({"error": error, "bytes": size, "joint_error": best.values[0] if best else None,
                     "joint_bytes": best.values[1] if best else None,
                     "ratio": best.values[1] / size if best else None})
    return rows


def summarize_run(seed: int, joint: Front, int8: Front, hypervolume: dict) -> dict:
    rows = compare(joint, int8)
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    return {"seed": seed, "rows": rows, "hypervolume": hypervolume, "dominated": sum(r < 1 for r in ratios),
            "compared": len(rows), "median_ratio": statistics.median(ratios) if ratios else None,
            "joint_front": [t.to_json() for t in joint], "int8_front": [t.to_json() for t in int8]}


def run(budget: int, seeds: list[int], epochs: tuple[int, int], max_error: float = 0.1, **model) -> dict:
    started = time.perf_counter()
    config = onefit.ElasticConfig(bits=(4, 8, 32))
    family, train_data, val, _ = trained_family(epochs, config=config, **model)
    problem = memoized(family_problem(family, val, calibration=train_data, objectives=OBJECTIVES))
    fp_problem = memoized(family_problem(family, val, calibration=train_data, objectives=OBJECTIVES,
                                         space=at_full_precision(family.space)))
    low, high = family.space.min(), all_bits(family.space.max(), 32)
    ideal = {"error": 0.0, "weight_bytes": problem.compute(low, ["weight_bytes"])["weight_bytes"]}
    reference = {"error": max_error, "weight_bytes": problem.compute(high, ["weight_bytes"])["weight_bytes"]}
    runs = []
    for seed in seeds:
        joint = search(problem, PredictorSearch(seed=seed), budget=budget, progress=False)
        fp_front = search(fp_problem, PredictorSearch(seed=seed), budget=budget, progress=False)
        int8 = Front([problem.evaluate(all_bits(t.arch, 8)) for t in fp_front], OBJECTIVES)
        runs.append(summarize_run(seed, joint, int8, {"joint": joint.hypervolume(reference, ideal),
                                                      "sequential_fp32": fp_front.hypervolume(reference, ideal),
                                                      "sequential_int8": int8.hypervolume(reference, ideal)}))
        print(f"seed {seed}: joint smaller at equal error on {runs[-1]['dominated']}/{runs[-1]['compared']} points, "
              f"median size ratio {runs[-1]['median_ratio']}", flush=True)
    return {"runs": runs, "ideal": ideal, "reference": reference, "budget": budget, "space_size": family.space.size,
            "dimensions": len(family.space), "seconds": round(time.perf_counter() - started, 1)}


def markdown(result: dict, command: str) -> str:
    env = environment()
    lines = [
        "# Joint architecture x precision search", "",
        f"`{command}` on {env['cpu']}, torch {env['torch']}; digits ResNet family with per-layer bits (4, 8, 32): "
        f"{result['dimensions']} dimensions, {result['space_size']:.3g} sub-models; predictor-assisted search, "
        f"{result['budget']} evaluations per front; validation error x weight bytes; took "
        f"{result['seconds'] / 60:.0f} min.", "",
        "| seed | hypervolume joint | sequential fp32 | sequential then 8 bits | joint smaller at equal error | median size ratio joint / 8-bit |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        hv = r["hypervolume"]
        ratio = "n/a" if r["median_ratio"] is None else f"{r['median_ratio']:.2f}"
        lines.append(f"| {r['seed']} | {hv['joint']:.4f} | {hv['sequential_fp32']:.4f} | {hv['sequential_int8']:.4f} "
                     f"| {r['dominated']} / {r['compared']} | {ratio} |")
    first = result["runs"][0]
    lines += ["", f"Seed {first['seed']}, per distinct point of the sequential 8-bit front:", "",
              "| 8-bit error | 8-bit KiB | joint error | joint KiB | ratio |", "|---:|---:|---:|---:|---:|"]
    for row in first["rows"]:
        if row["ratio"] is None:
            lines.append(f"| {100 * row['error']:.2f}% | {row['bytes'] / 1024:.1f} | none as good | | |")
        else:
            lines.append(f"| {100 * row['error']:.2f}% | {row['bytes'] / 1024:.1f} | {100 * row['joint_error']:.2f}% "
                         f"| {row['joint_bytes'] / 1024:.1f} | {row['ratio']:.2f} |")
    dominated = sum(r["dominated"] for r in result["runs"])
    compared = sum(r["compared"] for r in result["runs"])
    lines += ["", f"- the joint front is smaller at equal or lower error on **{dominated} of {compared}** points of "
              f"the sequential 8-bit fronts, distinct points (target: all; {'met' if dominated == compared else 'missed'})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budget, 1 seed, 1 epoch")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, help="re-render from a saved JSON (its fronts), no run")
    args = parser.parse_args(argv)
    settings = (dict(budget=12, seeds=[0], epochs=(1, 1), max_error=1.0, widths=(8, 16), blocks=(1, 1)) if args.quick
                else dict(budget=200, seeds=[0, 1, 2], epochs=(10, 20)))
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        front = lambda trials: Front([Trial.from_json(t) for t in trials], OBJECTIVES)  # noqa: E731
        result["runs"] = [summarize_run(r["seed"], front(r["joint_front"]), front(r["int8_front"]), r["hypervolume"])
                          for r in result["runs"]]
    else:
        with torch_threads(1):  # small convolutions: threads only add hand-offs on a shared 2-core machine
            result = run(**settings)
    command = result.get("command") or "python bench/joint_precision.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "joint_precision.json").write_text(json.dumps({**result, "command": command}, indent=1))
    (args.out / "joint_precision.md").write_text(markdown(result, command))
    print(markdown(result, command))
    return result


if __name__ == "__main__":
    main()
