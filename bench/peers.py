"""onefit against pruning and quantizing by hand, side by side in one process, on a ResNet-style CNN
(696 k params, 81 M MACs) trained by this script on MNIST-5k.

Peers: Torch-Pruning (L2 magnitude, uniform and global, at 30/50/70 % of channels, then 5 epochs of
fine-tuning), each pruned model (and the teacher) through ONNX Runtime fp32, ONNX Runtime static
int8 (QDQ), NNCF post-training quantization of the ONNX file run on ONNX Runtime, OpenVINO fp32
and NNCF int8 on OpenVINO. onefit: ``onefit run`` on the trained teacher with both runtimes as
targets (``--qat``: the family also trained at 8 bits, its int8 files built from that). Every row's accuracy is its own file's on the test set; onefit picks its model on the
validation split (the peers' best is picked on the test set, which favours them). Latency: 2
threads, medians of interleaved rounds at batch 1 and 64, as ratios to the teacher on ONNX
Runtime fp32 in the same round.

    python bench/peers.py              # bench/results/peers.{json,md}
    python bench/peers.py --qat --stem peers_qat   # the family trained at 8 bits too
    python bench/peers.py --quick      # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # so the run config can name peers:trained_teacher

RESULTS = Path(__file__).parent / "results"
TEACHER = {"in_channels": 1, "widths": [32, 64, 128], "blocks": [2, 2, 2], "classes": 10}


def trained_teacher(weights: str) -> torch.nn.Module:
    """The teacher with the weights this script trained (the run config names this function)."""
    import safetensors.torch

    import onefit

    model = onefit.zoo.resnet(**TEACHER)
    model.load_state_dict(safetensors.torch.load_file(weights))
    return model.eval()


def train_epochs(model, data, epochs: int, lr: float) -> None:
    from onefit.train import train_plain

    train_plain(model, data, epochs, lr=lr, progress=False)


def prune(teacher, example, ratio: float, global_pruning: bool, data, epochs: int):
    import torch_pruning as tp

    model = copy.deepcopy(teacher).train()
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=[model.head])
    pruner.step()
    train_epochs(model, data, epochs, lr=1e-3)
    return model.eval()


def nncf_onnx_int8(onnx_path: Path, target: Path, calibration) -> Path:
    """NNCF's post-training quantization of an ONNX file, to run on ONNX Runtime."""
    import nncf
    import onnx

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    dataset = nncf.Dataset(calibration, lambda batch: {name: batch[0].numpy()})
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration))  # NNCF counts items: batches
    onnx.save(quantized, str(target))
    return target


def pipelines(name: str, module, folder: Path, example, calibration, test) -> list[dict]:
    """The module through every peer runtime path; each row its file, runtime and test accuracy."""
    from onefit.export.onnx import accuracy_change
    from onefit.runtimes import runtime
    from onefit.runtimes.cpu import int8_weights

    ort, ov = runtime("onnxruntime"), runtime("openvino")
    reduce_range = int8_weights()[0]
    rows = []
    for rt, precision, label in ((ort, "fp32", "ONNX Runtime fp32"), (ort, "int8", "ONNX Runtime static int8"),
                                 (ov, "fp32", "OpenVINO fp32"), (ov, "int8", "NNCF int8 on OpenVINO")):
        try:
            built = rt.build(module, folder / f"{name}-{rt.name}-{precision}", precision, examples=(example,),
                             calibration=calibration, eval_data=test, reduce_range=reduce_range)
        except Exception as err:  # a pipeline that fails its parity floor is reported, not hidden
            rows.append({"model": name, "pipeline": label, "runtime": rt.name, "failed": str(err)[:200]})
            continue
        rows.append({"model": name, "pipeline": label, "runtime": rt.name, "path": str(built.path),
                     "accuracy": built.metric["onnx"], "cosine": built.cosine})
        if (rt.name, precision) == ("onnxruntime", "fp32"):
            fp32 = built.path
    target = nncf_onnx_int8(fp32, folder / f"{name}-nncf-onnx-int8.onnx", calibration)
    session = ort.session(target)
    rows.append({"model": name, "pipeline": "NNCF int8 on ONNX Runtime", "runtime": "onnxruntime", "path": str(target),
                 "accuracy": accuracy_change(module, session, test, None)["onnx"]})
    return rows


def onefit_run(weights: Path, folder: Path, args) -> tuple[list[dict], float, dict]:
    from onefit.run import parse_config, run

    config = parse_config({
        "seed": 0,
        "model": {"factory": "peers:trained_teacher", "kwargs": {"weights": str(weights)}},
        "data": {"bundled": "mnist5k", "kwargs": {"batch_size": 64}},
        "elastic": {"width": [0.125, 0.25, 0.375, 0.5, 0.75, 1.0],
                    # 8-bit quantization-aware training: one bits dimension, the runtimes' int8 scheme
                    **({"bits": [8], "activation_bits": 8, "bits_shared": True} if args.qat else {})},
        "train": {"recipe": "sortednet", "epochs": args.family_epochs, "lr": 1e-3,
                  "config": {"distill": args.distill}},
        "search": {"searcher": "linas", "budget": args.budget, "objectives": ["error", "macs", "params"]},
        "targets": {"runtimes": ["onnxruntime", "openvino"], "precisions": ["fp32", "int8"], "batch_sizes": [1, 64],
                    "threads": 2, "repeats": 10},
        "export": {"max_models": args.max_models}})
    started = time.perf_counter()
    run(config, folder, progress=False, echo=lambda line: print(f"[onefit] {line}", flush=True))
    seconds = time.perf_counter() - started
    manifest = json.loads((folder / "models" / "manifest.json").read_text())
    rows = [{"model": f"onefit {m['name']}", "pipeline": f"onefit {f['runtime']} {f['precision']}",
             "runtime": f["runtime"], "path": str(folder / "models" / f["file"]), "accuracy": f["metric"]["onnx"],
             "validation_accuracy": 100 * (1 - m["validation"]["error"]), "params": m["params"], "macs": m["macs"]}
            for m in manifest["models"] for f in m["files"]]
    return rows, seconds, manifest["cpu"]


def time_rounds(rows: list[dict], example, rounds: int, repeats: int) -> None:
    """Medians of interleaved rounds at batch 1 and 64 (2 threads), in place; each round every file once."""
    from onefit.runtimes import runtime

    live = [r for r in rows if "path" in r]
    for row in live:
        row["rounds"] = {1: [], 64: []}
    for _ in range(rounds):
        for batch in (1, 64):
            x = example.repeat(batch, 1, 1, 1)
            for row in live:
                latency = runtime(row["runtime"]).latency(Path(row["path"]), (x,), threads=2, repeats=repeats)
                row["rounds"][batch].append(latency.median_ms)
    for row in live:
        row["ms"] = {b: statistics.median(v) for b, v in row["rounds"].items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch each, one ratio, few evaluations")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--family-epochs", type=int, default=10)
    parser.add_argument("--distill", default="inplace", choices=("inplace", "teacher", "none"),
                        help="SortedNet's distillation: from the largest sub-model, from the trained teacher, or none")
    parser.add_argument("--qat", action="store_true",
                        help="train the family at 8 bits too (one shared bits dimension): int8 files keep its ranges")
    parser.add_argument("--budget", type=int, default=80)
    parser.add_argument("--max-models", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="peers", help="the results' file names: STEM.json, STEM.md")
    args = parser.parse_args(argv)
    ratios = (0.3, 0.5, 0.7)
    if args.quick:
        args.teacher_epochs = args.finetune_epochs = args.family_epochs = args.rounds = 1
        args.budget, args.max_models, ratios = 4, 1, (0.5,)
    import safetensors.torch

    import onefit
    from onefit.cost.latency import environment
    from onefit.data import mnist5k, validation_split

    torch.set_num_threads(2)
    torch.manual_seed(0)
    train_all, test = mnist5k(batch_size=64, seed=0)
    train, val = validation_split(train_all, seed=0)  # the same split onefit run holds out
    example = next(iter(test))[0][:1]
    calibration = [b for _, b in zip(range(10), train)]
    teacher = onefit.zoo.resnet(**TEACHER)
    t0 = time.perf_counter()
    train_epochs(teacher, train, args.teacher_epochs, lr=3e-3)
    teacher_seconds = time.perf_counter() - t0
    teacher_validation = onefit.evaluate(teacher, val)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "teacher.safetensors"
        safetensors.torch.save_file(teacher.state_dict(), str(weights))
        rows = pipelines("teacher", teacher, tmp, example, calibration, test)
        t0 = time.perf_counter()
        for ratio in ratios:
            for mode in ("uniform", "global"):
                pruned = prune(teacher, example, ratio, mode == "global", train, args.finetune_epochs)
                name = f"TP {mode} {int(100 * ratio)}%"
                for row in pipelines(name.replace(" ", "_").replace("%", ""), pruned, tmp, example, calibration, test):
                    rows.append({**row, "model": name, "params": sum(p.numel() for p in pruned.parameters())})
        peers_seconds = time.perf_counter() - t0
        ours, onefit_seconds, cpu = onefit_run(weights, tmp / "onefit", args)
        rows += ours
        time_rounds(rows, example, args.rounds, repeats=10 if args.quick else 30)
    result = summarize(rows, teacher_validation, teacher_seconds, peers_seconds, onefit_seconds)
    result.update(environment=environment(), cpu=cpu, args=vars(args) | {"out": str(args.out)},
                  command="python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{args.stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def summarize(rows: list[dict], teacher_validation: float, teacher_seconds: float, peers_seconds: float,
              onefit_seconds: float) -> dict:
    base = next(r for r in rows if r["model"] == "teacher" and r["pipeline"] == "ONNX Runtime fp32")
    for r in rows:
        if "ms" in r:
            r["speedup"] = {b: base["ms"][b] / r["ms"][b] for b in r["ms"]}
            r["drop"] = base["accuracy"] - r["accuracy"]
    targets = {}
    for runtime in ("onnxruntime", "openvino"):
        peers = [r for r in rows if r["runtime"] == runtime and "ms" in r and not r["model"].startswith("onefit")
                 and r["drop"] <= 1.0]
        # onefit's pick sees validation only: its sub-models within 1 point of the teacher's validation accuracy
        eligible = [r for r in rows if r["runtime"] == runtime and "ms" in r and r["model"].startswith("onefit")
                    and r["validation_accuracy"] >= teacher_validation - 1.0]
        for batch in (1, 64):
            peer = min(peers, key=lambda r: r["ms"][batch], default=None)
            pick = min(eligible, key=lambda r: r["ms"][batch], default=None)
            targets[f"{runtime} b={batch}"] = {
                "best_peer": peer and {k: peer[k] for k in ("model", "pipeline", "accuracy", "drop", "ms")},
                "onefit": pick and {k: pick[k] for k in ("model", "pipeline", "accuracy", "drop", "ms")},
                "ratio": peer and pick and peer["ms"][batch] / pick["ms"][batch],
                "target": 2.0 if batch == 64 else 1.5,
                "met": bool(peer and pick and peer["ms"][batch] / pick["ms"][batch] >= (2.0 if batch == 64 else 1.5)
                            and pick["drop"] <= 1.0)}
    return {"rows": rows, "targets": targets, "teacher_validation": teacher_validation, "seconds": {"teacher": teacher_seconds, "peers_sweep": peers_seconds,
                                                           "onefit_run": onefit_seconds}}


def markdown(result: dict) -> str:
    base = next(r for r in result["rows"] if r["model"] == "teacher" and r["pipeline"] == "ONNX Runtime fp32")
    lines = ["# onefit against Torch-Pruning + ONNX Runtime / NNCF / OpenVINO (MNIST-5k ResNet)\n",
             f"`{result['command'].strip()}`; {result['environment']['cpu']}; int8: {result['cpu']['int8_weights']}. "
             f"Teacher: {base['accuracy']:.2f} % test accuracy; latency at 2 threads, medians of "
             f"{result['args']['rounds']} interleaved rounds; x = speed-up over the teacher on ONNX Runtime fp32 "
             f"({base['ms'][1]:.3f} ms at batch 1, {base['ms'][64]:.3f} ms at batch 64) in the same run.\n",
             "## Targets (accuracy drop at most 1.0 point)\n",
             f"onefit's pick: the fastest file of a sub-model within 1 point of the teacher's validation accuracy "
             f"({result['teacher_validation']:.2f} %); '-' when none is.\n",
             "| runtime, batch | best peer (picked on test) | its ms | onefit (picked on validation) | its ms | "
             "onefit / peer speed | target | met |", "|---|---|---:|---|---:|---:|---:|---|"]
    def who(row: dict | None) -> str:
        return f"{row['model']}, {row['pipeline']} ({row['accuracy']:.2f} %)" if row else "-"

    for key, t in result["targets"].items():
        b = int(key.split("=")[1])
        peer, ours = t["best_peer"], t["onefit"]
        ms = [f"{r['ms'][b]:.3f}" if r else "-" for r in (peer, ours)]
        ratio = f"{t['ratio']:.2f}x" if t["ratio"] else "-"
        met = "yes" if t["met"] else ("no (its test drop is over 1 point)" if ours and ours["drop"] > 1.0 else "no")
        lines.append(f"| {key} | {who(peer)} | {ms[0]} | {who(ours)} | {ms[1]} | {ratio} | {t['target']}x | {met} |")
    s = result["seconds"]
    lines += ["", f"Wall time: the peers' whole sweep (pruning, fine-tuning and every quantization path) "
                  f"{s['peers_sweep']:.0f} s; onefit run (family training, search, export, timing) {s['onefit_run']:.0f} s "
                  f"({s['onefit_run'] / max(s['peers_sweep'], 1e-9):.2f}x; target at most 3x); the teacher's own "
                  f"training {s['teacher']:.0f} s.", "", "## Every pipeline\n",
              "| model | pipeline | test acc % | drop | ms b=1 | x b=1 | ms b=64 | x b=64 | spread b=64 (min-max ms) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        if "ms" not in r:
            lines.append(f"| {r['model']} | {r['pipeline']} | failed: {r['failed'][:80]} | | | | | | |")
            continue
        spread = f"{min(r['rounds'][64]):.3f}-{max(r['rounds'][64]):.3f}"
        lines.append(f"| {r['model']} | {r['pipeline']} | {r['accuracy']:.2f} | {r['drop']:+.2f} | {r['ms'][1]:.3f} | "
                     f"{r['speedup'][1]:.2f} | {r['ms'][64]:.3f} | {r['speedup'][64]:.2f} | {spread} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
