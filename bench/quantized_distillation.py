"""Low-bit models four ways, at 2, 3, 4 and 8 bits (every Linear and convolution at b bits):

  ptq    post-training quantization of the full-precision model (per-channel symmetric rounding)
  qat    quantization-aware training: the model fine-tuned with quantized weights (STE), labels only
  qd     quantized distillation (Polino et al. 2018): the same, with the loss mixing the labels
         and the full-precision teacher's softened outputs (T = 2, weight 0.7)
  dq     differentiable quantization (Polino et al. 2018): 2^b learned points per layer, the
         weights fixed, the points trained with the same distillation loss

The teacher is the same architecture trained normally; every method starts from its weights and
gets the same fine-tuning epochs, optimizer (Adam, cosine schedule) and batches. Every model is
evaluated after its batch-norm statistics are re-estimated on 20 training batches. Size: packed
weights at b bits plus one fp32 scale per output channel (dq: plus 2^b fp32 points per layer).

    python bench/quantized_distillation.py            # full run, writes bench/results/
    python bench/quantized_distillation.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from itertools import islice
from pathlib import Path

import torch

import onefit
from onefit.cost.latency import environment, torch_threads
from onefit.data import digits, mnist5k
from onefit.elastic.learned_points import bake_, points_bytes
from onefit.train import evaluate, recalibrate_bn, train_plain
from onefit.train.differentiable_quantization import DifferentiableQuantizationConfig, learn_points
from onefit.train.quantized import QuantizedDistillationConfig, QuantizedDistillationRecipe
from onefit.train.sampler import uniform_bits
from onefit.zoo import plain_cnn

RESULTS = Path(__file__).parent / "results"
TASKS = {
    # name: (data, model kwargs, teacher epochs, fine-tuning epochs)
    "digits": (digits, dict(widths=(16, 32), blocks=2), 15, 5),
    "mnist5k": (mnist5k, dict(widths=(16, 32), blocks=2), 8, 3),
}
BITS = (2, 3, 4, 8)
METHODS = ("ptq", "qat", "qd", "dq")
LR = 1e-3  # fine-tuning learning rate (weights); the points learn at DQ_LR
DQ_LR = 5e-3


def quantized_family(teacher: torch.nn.Module, bits: int, example: torch.Tensor):
    """The teacher's architecture, its own weights, one bits dimension per layer (no width or depth)."""
    config = onefit.ElasticConfig(width=(1.0,), depth=False, bits=(bits,))
    return onefit.elasticize(copy.deepcopy(teacher), (example,), config)


def score(module: torch.nn.Module, train_data, test_data) -> float:
    return evaluate(recalibrate_bn(module, train_data), test_data)


def fine_tune(teacher, bits: int, example, train_data, epochs: int, distill: bool, seed: int):
    """qat (labels only) or qd (distilled from ``teacher``): the family trained at its b-bit arch."""
    family = quantized_family(teacher, bits, example)
    config = QuantizedDistillationConfig(bits=(bits,), teacher="external" if distill else "none", seed=seed)
    optimizer = torch.optim.Adam(family.parameters(), lr=LR)
    torch.manual_seed(seed)
    onefit.train(family, train_data, QuantizedDistillationRecipe(config), epochs=epochs, optimizer=optimizer,
                 teacher=teacher if distill else None, progress=False)
    arch = uniform_bits(family.space, bits)
    return family.extract(arch), onefit.costs(family, arch)["weight_bytes"]


def run_bits(teacher, bits: int, example, train_data, test_data, epochs: int, seed: int) -> dict:
    family = quantized_family(teacher, bits, example)
    arch = uniform_bits(family.space, bits)
    row = {"bits": bits, "bytes": onefit.costs(family, arch)["weight_bytes"]}
    row["ptq"] = score(family.extract(arch), train_data, test_data)
    for method, distill in (("qat", False), ("qd", True)):
        t0 = time.perf_counter()
        module, _ = fine_tune(teacher, bits, example, train_data, epochs, distill, seed)
        row[method], row[f"{method}_seconds"] = score(module, train_data, test_data), time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    points = learn_points(copy.deepcopy(teacher), train_data, DifferentiableQuantizationConfig(bits=bits, lr=DQ_LR),
                          epochs=epochs, teacher=teacher, progress=False)
    row["dq_bytes"] = points_bytes(points)
    row["dq"], row["dq_seconds"] = score(bake_(points), train_data, test_data), time.perf_counter() - t0
    return row


def run_task(name: str, seed: int, bits: tuple, quick: bool = False) -> dict:
    load, kwargs, teacher_epochs, epochs = TASKS[name]
    train_data, test_data = load(batch_size=64, seed=seed)
    if quick:  # the smoke run: a tiny model, a few batches, one epoch each
        kwargs, teacher_epochs, epochs = {**kwargs, "widths": (8, 16)}, 1, 1
        train_data, test_data = list(islice(train_data, 4)), list(islice(test_data, 2))
    example = next(iter(test_data))[0][:1]
    torch.manual_seed(seed)
    teacher = train_plain(plain_cnn(**kwargs), train_data, teacher_epochs, progress=False)
    full = score(teacher, train_data, test_data)
    full_bytes = 4 * sum(p.numel() for p in teacher.parameters())
    rows = []
    for b in bits:
        rows.append(run_bits(teacher, b, example, train_data, test_data, epochs, seed))
        r = rows[-1]
        print(f"  {name} seed {seed} {b} bits: fp {full:.1f} ptq {r['ptq']:.1f} qat {r['qat']:.1f} "
              f"qd {r['qd']:.1f} dq {r['dq']:.1f}", flush=True)
    return {"task": name, "seed": seed, "full_accuracy": full, "full_bytes": full_bytes,
            "teacher_epochs": teacher_epochs, "epochs": epochs, "rows": rows}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def summarize(runs: list[dict]) -> dict:
    """Mean over seeds of each method at each bit-width, and the three targets."""
    summary = {}
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        full = statistics.fmean(r["full_accuracy"] for r in mine)
        means = {row["bits"]: {m: statistics.fmean(r["rows"][i][m] for r in mine) for m in METHODS}
                 for i, row in enumerate(mine[0]["rows"])}
        targets = {}
        if 4 in means:
            targets["qd_4bit_minus_full"] = {"value": means[4]["qd"] - full, "target": ">= -1.0"}
            targets["qd_4bit_minus_full"]["met"] = targets["qd_4bit_minus_full"]["value"] >= -1.0
        if 2 in means:
            gap = means[2]["qd"] - means[2]["ptq"]
            targets["qd_minus_ptq_2bit"] = {"value": gap, "target": ">= 20", "met": gap >= 20}
        if 8 in means:
            worst = min(means[8][m] - full for m in METHODS)
            targets["worst_8bit_minus_full"] = {"value": worst, "target": ">= -0.5", "met": worst >= -0.5}
        summary[task] = {"full_accuracy": full, "means": means, "targets": targets}
    return summary


TARGET_TEXT = {
    "qd_4bit_minus_full": "quantized distillation at 4 bits − full precision",
    "qd_minus_ptq_2bit": "quantized distillation − post-training quantization at 2 bits",
    "worst_8bit_minus_full": "worst method at 8 bits − full precision",
}


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Quantized distillation\n\n`{result['command']}` on {env.get('cpu', '?')} "
             f"({env.get('cores', '?')} cores, {result['threads']} thread), torch {env.get('torch', '?')}; seeds {result['seeds']}. "
             "Accuracy in % (mean ± std over seeds) after batch-norm re-estimation; sizes are packed weights.\n"]
    for task, s in result["summary"].items():
        mine = [r for r in result["runs"] if r["task"] == task]
        lines.append(f"\n## {task}\n\nFull precision: {spread([r['full_accuracy'] for r in mine])} "
                     f"({mine[0]['full_bytes']:,} bytes); teacher {mine[0]['teacher_epochs']} epochs, "
                     f"every method {mine[0]['epochs']} fine-tuning epochs.\n")
        lines.append("| bits | bytes (ptq/qat/qd) | bytes (dq) | post-training | QAT | quantized distillation "
                     "| differentiable quantization |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for i, row in enumerate(mine[0]["rows"]):
            col = {m: spread([r["rows"][i][m] for r in mine]) for m in METHODS}
            lines.append(f"| {row['bits']} | {row['bytes']:,} | {row['dq_bytes']:,} | {col['ptq']} | {col['qat']} "
                         f"| {col['qd']} | {col['dq']} |")
        lines.append("")
        for key, t in s["targets"].items():
            lines.append(f"- {TARGET_TEXT[key]}: **{t['value']:+.2f}** points (target {t['target']}: "
                         f"{'met' if t['met'] else 'missed'})")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantized_distillation.json").write_text(json.dumps(result, indent=1))
    (out / "quantized_distillation.md").write_text(markdown(result))
    print(markdown(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS), choices=list(BITS))
    parser.add_argument("--quick", action="store_true", help="digits only, 1 seed, 2 and 8 bits, a tiny model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.bits = ["digits"], [0], [2, 8]
    with torch_threads(1):  # the machine is shared; one thread per run keeps timings honest
        runs = [run_task(task, seed, tuple(args.bits), args.quick) for task in args.tasks for seed in args.seeds]
    result = {
        "command": "python bench/quantized_distillation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(),
        "threads": 1,
        "seeds": args.seeds,
        "runs": runs,
        "summary": summarize(runs),
    }
    write(result, args.out)
    return result


if __name__ == "__main__":
    main()
