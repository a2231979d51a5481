"""Structured pruning adapters against fine-tuning: one family carried from MNIST-5k digits 0-4 to 5-9.

For each seed:
  source     a ResNet trained as a SortedNet family on digits 0-4 (labels 0-4)
  finetune   (i) a copy of the whole family fine-tuned on digits 5-9 (a new head; every weight learns;
             SortedNet), so one task costs the whole family's parameters
  adapters   (ii) the source family frozen, ``onefit.adapt(family, ranks=(4, 8, 16))``: low-rank adapters
             on every convolution (pointwise, on the kernel's centre, as SPLoRA's) and a new head,
             trained with ``AdapterRecipe`` (the sandwich rule over sub-models and ranks)
Both get the same epochs on the target. Sub-models at 50 %, 70 % and 90 % of the weights pruned: the
largest sub-model of the family's nested chain within 50 / 30 / 10 % of the full model's parameters
(the same architecture for both methods), batch norm re-estimated on the target's training images,
accuracy on the target's test images. Learned parameters per task: what a task stores (the whole
fine-tuned family, or the adapters and head); per sub-model: its slice of them.

Targets (issue 22): at 70 % and 90 % pruned, adapters within 1 point of fine-tuning or better, with
at least 5x fewer learned parameters per task.

    python bench/adapters.py            # seeds 1-3; writes bench/results/adapters.{json,md}
    python bench/adapters.py --quick    # a smoke run (seconds)
    python bench/adapters.py --from-json bench/results/adapters.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import onefit
from onefit.adapters import learned_parameters_of
from onefit.cost.latency import environment
from onefit.data import mnist5k
from onefit.train import evaluate

RESULTS = Path(__file__).parent / "results"
STEM = "adapters"
MODEL = dict(in_channels=1, widths=(32, 64), blocks=(2, 2), classes=5, stem_stride=2)
WIDTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
PRUNED = (0.5, 0.7, 0.9)
RANKS = (4, 8, 16)


def split_by_digit(loader, digits: range, seed: int, shuffle: bool, limit: int | None = None) -> DataLoader:
    """The images of ``digits``, relabelled from 0; with ``limit``, that many drawn at random (by ``seed``)."""
    x, y = loader.dataset.tensors
    keep = torch.nonzero((y >= digits.start) & (y < digits.stop)).flatten()
    if limit is not None:
        keep = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:limit]]
    return DataLoader(TensorDataset(x[keep], y[keep] - digits.start), batch_size=64, shuffle=shuffle,
                      generator=torch.Generator().manual_seed(seed))


def sub_model_accuracy(family, arch, train, test) -> float:
    return evaluate(onefit.recalibrate_bn(family.extract(arch), train), test)


def run_seed(seed: int, args) -> dict:
    train_all, test_all = mnist5k(batch_size=64, seed=seed)
    source_train = split_by_digit(train_all, range(0, 5), seed, True)
    target_train = split_by_digit(train_all, range(5, 10), seed, True, limit=args.target_images)
    target_test = split_by_digit(test_all, range(5, 10), seed, False)
    if args.quick:
        source_train, target_train, target_test = ([b for _, b in zip(range(3), d)] for d in
                                                   (source_train, target_train, target_test))
    torch.manual_seed(seed)
    model = onefit.zoo.resnet(**MODEL)
    family = onefit.elasticize(model, (torch.randn(2, 1, 28, 28),), onefit.ElasticConfig(width=WIDTHS))
    seconds = {}
    t = time.perf_counter()
    onefit.train(family, source_train, onefit.SortedNetRecipe(onefit.SortedNetConfig(seed=seed)),
                 epochs=args.source_epochs, optimizer=torch.optim.Adam(family.parameters(), lr=3e-3), progress=False)
    seconds["source"] = time.perf_counter() - t
    full = onefit.costs(family, family.space.max())["params"]
    archs = {p: onefit.largest_within(family, params=(1 - p) * full) for p in PRUNED}

    # (i) fine-tune a copy of the whole family, with a new head
    tuned = copy.deepcopy(family)
    head = tuned.module.get_submodule("head")
    torch.manual_seed(seed)
    fresh = torch.nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        head.weight.copy_(fresh.weight)
        head.bias.copy_(fresh.bias)
    t = time.perf_counter()
    onefit.train(tuned, target_train, onefit.SortedNetRecipe(onefit.SortedNetConfig(seed=seed)),
                 epochs=args.target_epochs, optimizer=torch.optim.Adam(tuned.parameters(), lr=args.finetune_lr),
                 progress=False)
    seconds["finetune"] = time.perf_counter() - t
    finetune_learned = sum(p.numel() for p in tuned.module.parameters())

    # (ii) adapters on the frozen family
    adapters = onefit.adapt(family, ranks=RANKS, seed=seed)
    recipe = onefit.AdapterRecipe(onefit.SortedNetConfig(seed=seed))
    recipe.lr = args.adapter_lr
    t = time.perf_counter()
    onefit.train(family, target_train, recipe, epochs=args.target_epochs, progress=False)
    seconds["adapters"] = time.perf_counter() - t

    rows = []
    for pruned, arch in archs.items():
        params = onefit.costs(tuned, arch)["params"]
        row = {"pruned": pruned, "arch_params": params, "params_share": params / full,
               "finetune": sub_model_accuracy(tuned, arch, target_train, target_test),
               "finetune_learned_task": finetune_learned, "finetune_learned_sub_model": params, "adapters": {}}
        for rank in RANKS:
            with_rank = {**arch, "adapter:rank": rank}
            row["adapters"][str(rank)] = {"accuracy": sub_model_accuracy(family, with_rank, target_train, target_test),
                                     "learned_sub_model": learned_parameters_of(family, with_rank)}
        rows.append(row)
    return {"seed": seed, "full_params": full, "adapters_learned_task": adapters.learned_parameters(),
            "adapted_layers": len(adapters.layers), "skipped_layers": adapters.skipped, "seconds": seconds,
            "rows": rows}


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for i, pruned in enumerate(PRUNED):
        rows = [r["rows"][i] for r in runs]
        finetune = [r["finetune"] for r in rows]
        entry = {"pruned": pruned, "params_share": statistics.mean(r["params_share"] for r in rows),
                 "finetune_mean": statistics.mean(finetune), "finetune_all": finetune,
                 "finetune_learned_task": rows[0]["finetune_learned_task"], "ranks": {}}
        for rank in RANKS:
            acc = [r["adapters"][str(rank)]["accuracy"] for r in rows]
            entry["ranks"][str(rank)] = {"mean": statistics.mean(acc), "all": acc,
                                    "gap_to_finetune": statistics.mean(acc) - statistics.mean(finetune),
                                    "learned_sub_model": rows[0]["adapters"][str(rank)]["learned_sub_model"]}
        best = max(entry["ranks"], key=lambda k: entry["ranks"][k]["mean"])
        learned_ratio = entry["finetune_learned_task"] / runs[0]["adapters_learned_task"]
        entry["best_rank"] = best
        entry["learned_ratio_task"] = learned_ratio
        if pruned >= 0.7:
            entry["target_met"] = entry["ranks"][best]["gap_to_finetune"] >= -1.0 and learned_ratio >= 5
        out.append(entry)
    return out


def render(result: dict) -> str:
    runs = result["runs"]
    lines = [
        "# Structured pruning adapters against fine-tuning: MNIST-5k digits 0-4 to 5-9",
        "",
        f"`{result['command']}`; {result['machine']['cpu']}, torch {result['machine']['torch']}; seeds "
        f"{[r['seed'] for r in runs]}. Family: `resnet({', '.join(f'{k}={v}' for k, v in MODEL.items())})`, widths "
        f"{list(WIDTHS)}, SortedNet, {result['source_epochs']} epochs on 0-4; then {result['target_epochs']} epochs on "
        f"5-9 for each method (fine-tuning at lr {result['finetune_lr']}, adapters at {result['adapter_lr']}), on "
        f"{'all its training images' if not result.get('target_images') else str(result['target_images']) + ' of its training images'}. "
        f"Per task, fine-tuning learns and stores {runs[0]['rows'][0]['finetune_learned_task']:,} parameters (the "
        f"family), adapters {runs[0]['adapters_learned_task']:,} (ranks up to {max(RANKS)} on "
        f"{runs[0]['adapted_layers']} layers, and the head): "
        f"{runs[0]['rows'][0]['finetune_learned_task'] / runs[0]['adapters_learned_task']:.1f}x fewer.",
        "",
        "| pruned | params kept | (i) fine-tune all | " + " | ".join(f"(ii) adapters r={r}" for r in RANKS)
        + " | best gap (ii)-(i) | target |",
        "|---:|---:|---:|" + "---:|" * len(RANKS) + "---:|---|",
    ]
    for s in result["summary"]:
        cells = [f"{s['ranks'][str(r)]['mean']:.1f} ({s['ranks'][str(r)]['learned_sub_model']:,} learned)"
                 for r in RANKS]
        best = s["ranks"][s["best_rank"]]["gap_to_finetune"]
        target = "-" if "target_met" not in s else ("met" if s["target_met"] else "missed")
        lines.append(f"| {s['pruned']:.0%} | {s['params_share']:.0%} | {s['finetune_mean']:.1f} | " + " | ".join(cells)
                     + f" | {best:+.1f} (r={s['best_rank']}) | {target} |")
    lines += ["", "Accuracy in %, mean over seeds (each seed's figures in the JSON); in brackets, the learned "
              "parameters a sub-model of that rank uses. Target: at 70 % and 90 % pruned, the best adapter within "
              "1 point of fine-tuning or better, with >= 5x fewer learned parameters per task.",
              "", "Seconds per seed (source family, fine-tuning, adapters): " + "; ".join(
                  f"{r['seconds']['source']:.0f} / {r['seconds']['finetune']:.0f} / {r['seconds']['adapters']:.0f}"
                  for r in runs) + "."]
    if result["quick"]:
        lines += ["", "**A smoke run (--quick): 3 batches per task, 1 epoch; not a measurement.**"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # seed 0 chose the learning rates (pilots: fine-tuning 1e-3 / 3e-3, adapters 3e-3 / 1e-2 / 3e-2), so it is left out
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--target-epochs", type=int, default=6)
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--adapter-lr", type=float, default=3e-2)
    parser.add_argument("--target-images", type=int, help="train on this many target images (default: all)")
    parser.add_argument("--stem", default=STEM, help="name of the results files")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.source_epochs, args.target_epochs = [0], 1, 1
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        runs = [run_seed(seed, args) for seed in args.seeds]
        result = {"machine": environment(), "command": " ".join(["python", "bench/adapters.py",
                                                                 *(sys.argv[1:] if argv is None else argv)]),
                  "source_epochs": args.source_epochs, "target_epochs": args.target_epochs,
                  "finetune_lr": args.finetune_lr, "adapter_lr": args.adapter_lr, "quick": args.quick,
                  "target_images": args.target_images,
                  "runs": runs, "summary": summarise(runs)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.stem + ("_quick" if args.quick else "")
    if not args.from_json:
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    text = render(json.loads(json.dumps(result)))
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
