"""Does 8-bit quantization-aware training inside the family make int8 deployment free (issue 21)?

On MNIST-5k, a ResNet-style CNN trained by this script is made into two families trained the same way
(SortedNet, the same epochs, learning rate and seed):

- **PTQ**: widths and depths only; each sub-model's int8 file is ONNX Runtime's post-training static
  quantization (QDQ, per-channel symmetric weights, per-tensor uint8 activations calibrated on 10
  training batches), what onefit did before;
- **QAT**: the same plus one shared bits dimension, ``ElasticConfig(bits=(8,), activation_bits=8,
  bits_shared=True)``: every sub-model the sandwich rule visits is drawn at 8 or 32 bits, with the
  runtime's scheme (per-channel symmetric 8-bit weights, per-tensor unsigned 8-bit inputs of every
  Conv / Linear over ranges observed before training and after every epoch). Its fp32 file is the
  sub-model at 32 bits, its int8 file the sub-model at 8 bits, whose trained input ranges ONNX
  Runtime is given instead of calibrating its own.

For a grid of sub-models (uniform widths 100 / 75 / 50 / 25 % at full depth, and the smallest), each
file's test accuracy is measured on ONNX Runtime itself; reported: fp32 and int8 accuracy of each
family and the change int8 makes, medians over seeds (the spread beside them).

    python bench/qat_int8.py                 # bench/results/qat_int8.{json,md}
    python bench/qat_int8.py --quick         # a smoke run
    python bench/qat_int8.py --reduce-range  # bench/results/qat_int8_reduced_range.{json,md}

``--reduce-range`` asks what a CPU without VNNI costs, where ONNX Runtime's int8 files hold weights
on its reduced range (levels -64..64): both families train at 8 bits, one on the full range (127
levels, what the files of a VNNI CPU hold, so its reduced-range files round the weights again), one
on the reduced range (``ElasticConfig(reduce_range=True)``), and every int8 file is built with
``reduce_range=True``; *cosine* is the int8 file's output against the sub-model's own fake-quantized
forward in PyTorch on the calibration batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
MODEL = dict(in_channels=1, widths=(16, 32, 64), blocks=(2, 2, 2), classes=10)
GRID = ((1.0, True), (0.75, True), (0.5, True), (0.25, True), (0.25, False))
QAT = dict(bits=(8,), activation_bits=8, bits_shared=True)
FAMILIES = {"PTQ": {}, "QAT": QAT}
RANGES = {"QAT full range": QAT, "QAT reduced range": {**QAT, "reduce_range": True}}  # --reduce-range


def families(args) -> dict[str, dict]:
    return RANGES if args.reduce_range else FAMILIES


def grid_arch(space, width: float, deepest: bool) -> dict:
    """Every width group at the choice nearest ``width`` x its full size; every stage deepest or shallowest."""
    arch = dict(space.max() if deepest else space.min())
    for dim in space:
        if dim.kind == "width":
            arch[dim.name] = min(dim.choices, key=lambda c: abs(c - width * dim.choices[-1]))
    return arch


def run_seed(seed: int, args) -> list[dict]:
    import onefit
    from onefit.data import mnist5k
    from onefit.run.exported import precision_arch
    from onefit.runtimes import runtime
    from onefit.runtimes.cpu import int8_weights

    torch.manual_seed(seed)
    train, test = mnist5k(batch_size=64, seed=seed)
    example = next(iter(test))[0][:1]
    calibration = [b for _, b in zip(range(10), train)]
    reduce_range, why = (True, "reduced range (-64..64), as for a CPU without VNNI") if args.reduce_range else int8_weights()
    teacher = onefit.train_plain(onefit.zoo.resnet(**MODEL), train, args.teacher_epochs, progress=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in families(args).items():
            torch.manual_seed(seed)
            family = onefit.elasticize(teacher, (example,), onefit.ElasticConfig(width=(0.25, 0.5, 0.75, 1.0), **options))
            t0 = time.perf_counter()
            onefit.train(family, train, onefit.SortedNetRecipe(onefit.SortedNetConfig(seed=seed)), epochs=args.epochs,
                         optimizer=torch.optim.Adam(family.parameters(), lr=1e-3), progress=False)
            seconds = time.perf_counter() - t0
            for width, deepest in GRID:
                arch = grid_arch(family.space, width, deepest)
                row = {"seed": seed, "family": name, "width": width, "depth": "max" if deepest else "min",
                       "train_seconds": round(seconds, 1), "int8_weights": why}
                for precision in ("fp32", "int8"):
                    at = precision_arch(family, arch, precision)
                    module = onefit.recalibrate_bn(family.extract(at), train)
                    built = runtime("onnxruntime").build(
                        module, Path(tmp, f"{name}-{width}-{deepest}-{precision}"), precision, examples=(example,),
                        calibration=calibration, eval_data=test, task=None, reduce_range=reduce_range,
                        bits=family.bits(at) if "bits" in options else None)
                    row[precision] = built.metric["onnx"]
                    row[f"{precision}_cosine"] = built.cosine
                row["change"] = row["int8"] - row["fp32"]
                rows.append(row)
                print(f"seed {seed} {name} w={width:.0%} d={row['depth']}: fp32 {row['fp32']:.2f} "
                      f"int8 {row['int8']:.2f} ({row['change']:+.2f})", flush=True)
    return rows


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def markdown(result: dict) -> str:
    rows, names = result["rows"], list(result["summary"])
    keys = ("fp32", "int8", "change") + (("int8_cosine",) if result["args"]["reduce_range"] else ())
    title = ("8-bit weights on ONNX Runtime's reduced range: trained on it or rounded again (issue 21)"
             if result["args"]["reduce_range"] else
             "8-bit quantization-aware training in the family against post-training int8 (issue 21)")
    lines = [f"# {title}", "",
             f"Made by `{result['command']}` ({result['seconds']:.0f} s; {result['args']['seeds']} seeds, "
             f"teacher {result['args']['teacher_epochs']} epochs, each family {result['args']['epochs']} SortedNet "
             f"epochs at 1e-3). MNIST-5k, ResNet-style CNN {MODEL['widths']} x {MODEL['blocks']}; every accuracy "
             f"is the file's own on ONNX Runtime, on the 1,000 test images. int8 weights: {rows[0]['int8_weights']}.",
             "", "Median over seeds [min, max]. *change* = int8 − fp32 of the same family's file"
             + ("; *int8 cosine*: the int8 file against the sub-model's fake-quantized forward." if "int8_cosine" in keys
                else "."), "",
             "| sub-model | " + " | ".join(f"{n} {k.replace('_', ' ')}" for n in names for k in keys) + " |",
             "|---|" + "---:|" * (len(names) * len(keys))]
    for width, deepest in GRID:
        depth = "max" if deepest else "min"
        cells = []
        for family in names:
            of = [r for r in rows if r["family"] == family and r["width"] == width and r["depth"] == depth]
            cells += [spread([r[k] for r in of]) if k != "int8_cosine" else
                      f"{statistics.median(r[k] for r in of):.5f} [{min(r[k] for r in of):.5f}]" for k in keys]
        lines.append(f"| width {width:.0%}, depth {depth} | " + " | ".join(cells) + " |")
    s = result["summary"]
    lines += ["", "Median change int8 makes over every sub-model and seed: "
              + ", ".join(f"{n} {s[n]['median_change']:+.2f}" for n in names) + " points; worst "
              + ", ".join(f"{n} {s[n]['worst_change']:+.2f}" for n in names) + ". Median int8 accuracy: "
              + ", ".join(f"{n} {s[n]['median_int8']:.2f}" for n in names) + ". Training: "
              + ", ".join(f"{n} {s[n]['train_seconds']:.0f} s" for n in names) + " per family (median)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, one epoch each")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reduce-range", action="store_true",
                        help="int8 files on the reduced range: QAT trained on the full range against on the reduced one")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_epochs, args.epochs = 1, 1, 1
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rows = [row for seed in range(args.seeds) for row in run_seed(seed, args)]
    summary = {}
    for family in families(args):
        of = [r for r in rows if r["family"] == family]
        summary[family] = {"median_change": statistics.median(r["change"] for r in of),
                           "worst_change": min(r["change"] for r in of),
                           "median_int8": statistics.median(r["int8"] for r in of),
                           "train_seconds": statistics.median(r["train_seconds"] for r in of)}
    from onefit.cost.latency import environment

    result = {"rows": rows, "summary": summary, "seconds": time.perf_counter() - t0, "args": vars(args) | {"out": str(args.out)},
              "environment": environment(),
              "command": "python bench/qat_int8.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "qat_int8" + ("_reduced_range" if args.reduce_range else "") + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
