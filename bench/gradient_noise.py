"""Annealed Gaussian gradient noise (Neelakantan et al. 2015) in nested (SortedNet) family training.

The deepest zoo family that trains on the 8x8 digits (most Linear/Conv layers: MobileNetV3) is
trained with SortedNet (in-place distillation, Adam 3e-3, cosine schedule) once per noise level
eta (none, 0.01, 0.3, 1.0: noise of variance eta / (1 + t)^0.55 added to every gradient before
each step) and seed. Then the width x depth grid of 8 sub-models of bench/nested_vs_individual.py
plus the smallest and largest sub-models are extracted, their batch norms re-estimated on 20
training batches, and evaluated on the test split.

    python bench/gradient_noise.py            # full run, writes bench/results/gradient_noise.{json,md}
    python bench/gradient_noise.py --quick    # a smoke run: 1 seed, 2 noise levels, 1 short epoch
    python bench/gradient_noise.py --from-json bench/results/gradient_noise.json   # re-render the markdown
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
from torch import nn

import onefit
from onefit.cost.latency import environment, torch_threads
from onefit.data import digits
from onefit.train import SortedNetConfig, evaluate, recalibrate_bn
from onefit.zoo import MODELS

sys.path.insert(0, str(Path(__file__).parent))
from nested_vs_individual import WIDTHS, grid_arch  # noqa: E402  (bench/ is not a package)

RESULTS = Path(__file__).parent / "results"
ETAS = (0.0, 0.01, 0.3, 1.0)  # 0: no noise (gradient_noise=None)
IMAGE_MODELS = ("convnext", "mlp", "mobilenet_v2", "mobilenet_v3", "plain_cnn", "resnet", "vit")  # take 8x8 digits
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weighted_layers(model: nn.Module) -> int:
    return sum(isinstance(m, WEIGHTED) for m in model.modules())


def zoo_depths() -> dict[str, int]:
    """Linear/Conv modules of every zoo model that takes the 1x8x8 digits (default kwargs, 10 classes)."""
    x = torch.zeros(2, 1, 8, 8)
    depths = {}
    for name in IMAGE_MODELS:
        model = MODELS[name](**({"in_features": 64} if name == "mlp" else {}))
        assert model(x).shape == (2, 10), name
        depths[name] = weighted_layers(model)
    return depths


def run_one(model_name: str, eta: float, seed: int, epochs: int, batches: int | None) -> dict:
    train_data, test_data = digits(batch_size=64, seed=seed)
    if batches is not None:  # the smoke run: a few batches only
        train_data = list(train_data)[:batches]
    example = next(iter(test_data))[0][:1]
    torch.manual_seed(seed)
    family = onefit.elasticize(MODELS[model_name](), (example,))
    recipe = onefit.SortedNetRecipe(SortedNetConfig(distill="inplace", seed=seed))
    optimizer = torch.optim.Adam(family.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    history = onefit.train(family, train_data, recipe, epochs=epochs, optimizer=optimizer,
                           gradient_noise=eta or None, progress=False)
    seconds = time.perf_counter() - t0

    def accuracy(arch: dict) -> float:
        return evaluate(recalibrate_bn(family.extract(arch), train_data), test_data)

    rows = []
    for deepest in (False, True):
        for width in WIDTHS:
            arch = grid_arch(family.space, width, deepest)
            rows.append({"width": width, "depth": "max" if deepest else "min", **onefit.costs(family, arch),
                         "accuracy": accuracy(arch)})
    smallest, largest = family.space.min(), family.space.max()
    by_arch = {json.dumps(grid_arch(family.space, r["width"], r["depth"] == "max"), sort_keys=True): r["accuracy"]
               for r in rows}
    small_acc = by_arch.get(json.dumps(smallest, sort_keys=True))
    large_acc = by_arch.get(json.dumps(largest, sort_keys=True))
    small_acc = accuracy(smallest) if small_acc is None else small_acc  # the grid's corners, as a rule
    large_acc = accuracy(largest) if large_acc is None else large_acc
    run = {"eta": eta, "seed": seed, "seconds": seconds, "rows": rows,
           "median_accuracy": statistics.median(r["accuracy"] for r in rows),
           "smallest_accuracy": small_acc, "largest_accuracy": large_acc,
           "smallest_costs": onefit.costs(family, smallest), "largest_costs": onefit.costs(family, largest),
           "final_loss_largest": history[-1]["loss_largest"], "final_loss_mean": history[-1]["loss_mean"],
           "loss_largest_by_epoch": [h["loss_largest"] for h in history]}
    print(f"  eta {eta:g} seed {seed}: median {run['median_accuracy']:.1f} smallest {small_acc:.1f} "
          f"largest {large_acc:.1f} loss {run['final_loss_largest']:.3f} ({seconds:.0f} s)", flush=True)
    return run


METRICS = (("median_accuracy", "median sub-model acc. (grid of 8)", 1), ("smallest_accuracy", "smallest acc.", 1),
           ("largest_accuracy", "largest acc.", 1), ("final_loss_largest", "final train loss (largest)", 3))


def spread(values: list[float], digits: int = 1) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def summarize(runs: list[dict]) -> dict:
    """Per eta: mean and std over seeds of each metric, and its paired difference against no noise (same seed)."""
    base = {r["seed"]: r for r in runs if r["eta"] == 0.0}
    summary = {}
    for eta in dict.fromkeys(r["eta"] for r in runs):
        mine = [r for r in runs if r["eta"] == eta]
        s = {}
        for key, _, _ in METRICS:
            vals = [r[key] for r in mine]
            s[key] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            diffs = [r[key] - base[r["seed"]][key] for r in mine if r["seed"] in base]
            if eta != 0.0 and diffs:
                s[key]["paired_diff_mean"] = statistics.fmean(diffs)
                s[key]["paired_diffs"] = diffs
        summary[str(eta)] = s
    return summary


def verdict(summary: dict) -> str:
    """'helps', 'hurts' or 'no difference' per eta, from the paired median-accuracy differences: a
    difference counts when every seed moves the same way and the mean moves by more than the
    no-noise seed spread."""
    noise_free_sd = summary["0.0"]["median_accuracy"]["std"] if "0.0" in summary else 0.0
    parts = []
    for eta, s in summary.items():
        m = s["median_accuracy"]
        if eta == "0.0" or "paired_diffs" not in m:
            continue
        d, diffs = m["paired_diff_mean"], m["paired_diffs"]
        same_sign = all(x > 0 for x in diffs) or all(x < 0 for x in diffs)
        word = ("helps" if d > 0 else "hurts") if same_sign and abs(d) > max(noise_free_sd, 0.1) else "no difference"
        parts.append(f"eta {float(eta):g}: {word} ({d:+.1f} points)")
    return "; ".join(parts)


def markdown(result: dict) -> str:
    epochs_note = f" {result['epochs_note']}" if result.get("epochs_note") else ""
    lines = [f"# Gradient noise in nested training\n\n`{result['command']}` on {result['machine']}; "
             f"family `{result['model']}` ({result['model_layers']} Linear/Conv layers, the most of the zoo models "
             f"that take the 8x8 digits: {', '.join(f'{k} {v}' for k, v in result['zoo_layers'].items())}); "
             f"SortedNet with in-place distillation, Adam lr 3e-3, cosine schedule, batch 64, "
             f"{result['epochs']} epochs{epochs_note}; seeds {result['seeds']}. Accuracy in % on the digits test split "
             "after batch-norm re-estimation (20 training batches), mean ± std over seeds; grid = widths "
             f"{', '.join(f'{w:.0%}' for w in WIDTHS)} x shallowest/deepest stages; smallest and largest are the "
             "space's min and max. Final train loss: the largest sub-model's, averaged over the last epoch "
             "(with the noise on). Δ: paired difference against no noise, same seed, mean over seeds.\n",
             "| eta | " + " | ".join(label for _, label, _ in METRICS) + " | Δ median acc. | Δ smallest | Δ largest |",
             "|---|" + "---:|" * (len(METRICS) + 3)]
    for eta, s in result["summary"].items():
        mine = [r for r in result["runs"] if str(r["eta"]) == eta]
        cells = [spread([r[key] for r in mine], dg) for key, _, dg in METRICS]
        deltas = [f"{s[k]['paired_diff_mean']:+.1f}" if "paired_diff_mean" in s[k] else "—"
                  for k in ("median_accuracy", "smallest_accuracy", "largest_accuracy")]
        label = "0 (none)" if float(eta) == 0 else f"{float(eta):g}"
        lines.append(f"| {label} | " + " | ".join(cells + deltas) + " |")
    lines.append(f"\nNoise: N(0, eta / (1 + t)^0.55) on every gradient, t the optimizer step "
                 f"({result['steps_per_epoch']} steps per epoch); the noise generator is seeded with the recipe's "
                 "seed, so the noise changes with the seed too, as do the data order, initialisation and sub-models.")
    lines.append(f"\nVerdict on the median sub-model accuracy, per eta (a difference counts only when every seed "
                 f"moves the same way and the mean moves by more than the no-noise seed spread): "
                 f"{verdict(result['summary'])}.")
    lines.append(f"\nIn short: {result['conclusion']}\n" if result.get("conclusion") else "")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--etas", type=float, nargs="+", default=list(ETAS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="1 seed, eta 0 and 1, 1 epoch of 3 batches")
    parser.add_argument("--from-json", type=Path, help="re-render the markdown from a saved JSON, no run")
    parser.add_argument("--conclusion", help="the 'In short' line (kept in the JSON)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.conclusion:
            result["conclusion"] = args.conclusion
        result["summary"] = summarize(result["runs"])
    else:
        batches = None
        if args.quick:
            args.seeds, args.etas, args.epochs, batches = [0], [0.0, 1.0], 1, 3
        depths = zoo_depths()
        model = max(depths, key=depths.get)
        probe = onefit.elasticize(MODELS[model](), (torch.zeros(1, 1, 8, 8),))
        kinds = {d.kind for d in probe.space}
        assert {"width", "depth"} <= kinds, f"{model} has no width and depth dimensions: {kinds}"
        print(f"family {model}: {depths[model]} Linear/Conv layers; space {len(probe.space)} dimensions", flush=True)
        t0 = time.perf_counter()
        with torch_threads(1):  # small convolutions on a shared 2-core machine, as the other benchmarks
            runs = [run_one(model, eta, seed, args.epochs, batches) for eta in args.etas for seed in args.seeds]
        env = environment()
        result = {
            "command": "python bench/gradient_noise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{env['cpu']} ({env['cores']} cores, 1 thread), torch {env['torch']}",
            "processor": platform.processor(), "platform": platform.platform(), "environment": env,
            "model": model, "model_kwargs": {}, "model_layers": depths[model], "zoo_layers": depths,
            "space": probe.space.to_json(), "etas": args.etas, "seeds": args.seeds, "epochs": args.epochs,
            "steps_per_epoch": batches or len(digits(batch_size=64, seed=0)[0]), "optimizer": "Adam lr 3e-3, cosine",
            "recipe": "SortedNet, distill='inplace'", "batch_size": 64, "bn_recalibration_batches": 20,
            "total_seconds": time.perf_counter() - t0, "runs": runs, "summary": summarize(runs),
            "conclusion": args.conclusion,
        }
    (args.out / "gradient_noise.json").write_text(json.dumps(result, indent=1))
    (args.out / "gradient_noise.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
