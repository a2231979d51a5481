"""Continual inference of a temporal CNN family on sequential MNIST-5k: one prediction per new row.

Each image is a stream of 28 rows (28 features each). A temporal CNN without padding in time
(``zoo.temporal_cnn(padding=False)``: a 5-tap stem, residual blocks of dilation 1, 2, 4, max over
the positions left) is trained as a SortedNet family on whole images. For sub-models across the
family (every width choice), ``onefit.continual`` turns the extracted sub-model into a streaming
module; the figures are

  accuracy        of the streaming module's output after the 28th row (checked equal to the offline model)
  MACs / step     torch's FLOP counter over one step, against the offline model on the 28-row window
  latency / step  torch eager, batch 1, medians of interleaved rounds: one forward_step against
                  recomputing the whole window each time a row arrives

Targets (issue 22): MACs per step <= 1/10 of the window's for every sub-model; a measured speed-up
of at least half the MAC ratio.

    python bench/continual_inference.py            # writes bench/results/continual.{json,md}
    python bench/continual_inference.py --quick    # a smoke run (seconds)
    python bench/continual_inference.py --from-json bench/results/continual.json
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

import onefit
from onefit.cost.latency import environment, time_call, torch_threads
from onefit.data import mnist5k
from onefit.export.onnx import onnx_session
from onefit.train import evaluate

RESULTS = Path(__file__).parent / "results"
STEM = "continual"
WINDOW = 28  # rows of an image: the clip each streaming output stands for


def rows_as_time(loader) -> list:
    """(B, 1, 28, 28) images as (B, 28 columns, 28 rows): rows are the frames."""
    return [(x[:, 0].transpose(1, 2).contiguous(), y) for x, y in loader]


def call_ms(run, calls: int, threads: int) -> float:
    """Milliseconds of one call of ``run`` (the median of ``calls``, after a few warm-up calls)."""
    return time_call(run, batch=1, backend="bench", threads=threads, repeats=calls, warmup=5).median_ms


def stream_accuracy(stream, data) -> tuple[float, float]:
    """Accuracy of the streaming output after each image's last row, and its largest difference
    from the offline model's logits."""
    correct = total = 0
    worst = 0.0
    with torch.no_grad():
        for x, y in data:
            stream.clean_state()
            logits = stream.forward_steps(x)[..., -1]
            worst = max(worst, (logits - stream.module(x)).abs().max().item())
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    return 100.0 * correct / total, worst


def run(args, argv) -> dict:
    torch.manual_seed(args.seed)
    train_loader, test_loader = mnist5k(batch_size=64, seed=args.seed)
    train_data, test_data = rows_as_time(train_loader), rows_as_time(test_loader)
    if args.quick:
        train_data, test_data = train_data[:4], test_data[:2]
    model = onefit.zoo.temporal_cnn(in_channels=28, channels=args.channels, blocks=3, classes=10, stride=1,
                                    padding=False)
    example = train_data[0][0][:2]
    family = onefit.elasticize(model, (example,), onefit.ElasticConfig(width=(0.25, 0.5, 0.75, 1.0)))
    t = time.perf_counter()
    onefit.train(family, train_data, onefit.SortedNetRecipe(), epochs=args.epochs,
                 optimizer=torch.optim.Adam(family.parameters(), lr=3e-3), progress=False)
    train_seconds = time.perf_counter() - t
    dims = family.space.names
    archs = [dict(zip(dims, values)) for values in zip(*(family.space[d].choices for d in dims))]
    if args.quick:  # the smallest and the largest: each sub-model's step goes through the (slow) dynamo exporter
        archs = [archs[0], archs[-1]]
    rows = []
    for arch in archs:
        sub = onefit.recalibrate_bn(family.extract(arch), train_data)
        stream = onefit.continual(sub, example[:1])
        accuracy, worst = stream_accuracy(stream, test_data)
        rows.append({"arch": arch, "params": sum(p.numel() for p in sub.parameters()),
                     "offline_accuracy": evaluate(sub, test_data), "stream_accuracy": accuracy,
                     "max_logit_difference": worst, "window_macs": stream.window_macs(),
                     "step_macs": stream.step_macs(), "receptive_field": stream.receptive_field,
                     "delay": stream.delay, "_stream": stream, "_model": sub})
    frame, clip = example[:1, :, 0], example[:1]
    sessions = {}
    for i, row in enumerate(rows):  # the same two ways on ONNX Runtime: the window's file, the step's file
        stream = row["_stream"]
        stream.clean_state()
        for t in range(WINDOW):
            stream.forward_step(example[:1, :, t])
        state = stream.state()
        folder = Path(tempfile.mkdtemp())
        onefit.export(row["_model"], folder / "window.onnx", (clip,))
        onefit.export(stream.step_module(), folder / "step.onnx", (frame, *state), exporter="dynamo")
        sessions[i] = {"window": (onnx_session(folder / "window.onnx", args.threads), (clip,)),
                       "step": (onnx_session(folder / "step.onnx", args.threads), (frame, *state))}
    rounds = {i: {k: [] for k in ("step", "window", "ort_step", "ort_window")} for i in range(len(rows))}
    with torch_threads(args.threads), torch.no_grad():
        for _ in range(args.rounds):  # interleaved: every sub-model, every way, each round
            for i, row in enumerate(rows):
                stream, model = row["_stream"], row["_model"]
                rounds[i]["step"].append(stream.step_latency(repeats=args.calls, threads=args.threads).median_ms)
                rounds[i]["window"].append(call_ms(lambda: model(clip), args.calls, args.threads))
                for way in ("step", "window"):
                    session, inputs = sessions[i][way]
                    feeds = {inp.name: x.numpy() for inp, x in zip(session.get_inputs(), inputs)}
                    rounds[i][f"ort_{way}"].append(call_ms(lambda: session.run(None, feeds), args.calls, args.threads))
    for i, row in enumerate(rows):
        del row["_stream"], row["_model"]
        for way in ("step", "window", "ort_step", "ort_window"):
            times = rounds[i][way]
            row[f"{way}_ms"], row[f"{way}_ms_range"] = statistics.median(times), [min(times), max(times)]
        row.update(mac_ratio=row["window_macs"] / row["step_macs"], speedup=row["window_ms"] / row["step_ms"],
                   ort_speedup=row["ort_window_ms"] / row["ort_step_ms"])
        row["targets"] = {"macs_per_step_at_most_a_tenth": row["mac_ratio"] >= 10,
                          "speedup_at_least_half_the_mac_ratio": row["speedup"] >= row["mac_ratio"] / 2}
    return {"machine": environment(), "command": " ".join(["python", "bench/continual_inference.py", *(argv or [])]),
            "seed": args.seed, "epochs": args.epochs, "channels": args.channels, "threads": args.threads,
            "rounds": args.rounds, "calls": args.calls, "train_seconds": train_seconds, "window": WINDOW,
            "quick": args.quick, "rows": rows}


def render(result: dict) -> str:
    lines = [
        "# Continual inference: a temporal CNN family on sequential MNIST-5k, one prediction per row",
        "",
        f"`{result['command']}`; {result['machine']['cpu']}, torch {result['machine']['torch']}, "
        f"{result['threads']} threads, batch 1. Family: `temporal_cnn(in_channels=28, channels={result['channels']}, "
        f"blocks=3, stride=1, padding=False)`, SortedNet, {result['epochs']} epochs (seed {result['seed']}), "
        f"trained in {result['train_seconds']:.0f} s. Latency: medians of {result['rounds']} interleaved rounds "
        f"of {result['calls']} calls each (range over rounds in brackets).",
        "",
        "| sub-model | params | accuracy offline / streaming | max logit diff | MACs window | MACs / step | ratio "
        "| window ms | step ms | speed-up | targets | ORT window ms | ORT step ms | ORT speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        arch = ", ".join(f"{v}" for v in row["arch"].values())
        met = row["targets"]
        verdict = ("MACs " + ("met" if met["macs_per_step_at_most_a_tenth"] else "missed") + ", speed " +
                   ("met" if met["speedup_at_least_half_the_mac_ratio"] else "missed"))
        lines.append(
            f"| width {arch} | {row['params']:,} | {row['offline_accuracy']:.1f} / {row['stream_accuracy']:.1f} "
            f"| {row['max_logit_difference']:.1e} | {row['window_macs']:,} | {row['step_macs']:,} "
            f"| {row['mac_ratio']:.1f}x | {row['window_ms']:.3f} [{row['window_ms_range'][0]:.3f}-"
            f"{row['window_ms_range'][1]:.3f}] | {row['step_ms']:.3f} [{row['step_ms_range'][0]:.3f}-"
            f"{row['step_ms_range'][1]:.3f}] | {row['speedup']:.1f}x | {verdict} | "
            + (f"{row['ort_window_ms']:.3f} | {row['ort_step_ms']:.3f} | {row['ort_speedup']:.1f}x |"
               if "ort_step_ms" in row else "- | - | - |"))
    lines += ["", "Targets (torch eager): MACs per step at most a tenth of the window's (ratio >= 10x); a measured "
              "speed-up of at least half the MAC ratio. ORT: the same sub-model's window as a verified ONNX file, "
              "and its step (`stream.step_module()`, the state passed in and out) as another, on ONNX Runtime. "
              "Each streaming output is the offline model's on the last 28 rows; the "
              f"receptive field is {result['rows'][0]['receptive_field']} rows, the delay "
              f"{result['rows'][0]['delay']}."]
    if result["quick"]:
        lines += ["", "**A smoke run (--quick): 4 training batches, 2 test batches; not a measurement.**"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.channels, args.rounds, args.calls = 1, 16, 2, 5
    result = json.loads(args.from_json.read_text()) if args.from_json else run(args, argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = STEM + ("_quick" if args.quick else "")
    if not args.from_json:
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
