"""onefit against pruning and quantizing by hand, side by side in one process, on one of two models:

- ``--model cnn`` (the default): a ResNet-style CNN (696 k params, 81 M MACs) trained by this
  script on MNIST-5k; the metric is test accuracy, the bar a drop of at most 1.0 point.
- ``--model minilm``: the real all-MiniLM-L6-v2 sentence encoder (22.7 M params), on sentences of
  the Python language reference (seq. 32); the metric is the cosine of a file's sentence
  embeddings to the original's on the held-out sentences, the bar a cosine of at least 0.95.

Peers: Torch-Pruning (L2 magnitude, uniform and global, at 30/50/70 % of the channels; for MiniLM
of the attention heads and FFN channels, the hidden size kept), each pruned model fine-tuned 5
epochs (MiniLM: cosine distillation from the original, as onefit trains), then it (and the
teacher) through ONNX Runtime fp32, ONNX Runtime int8 (static QDQ for the CNN, dynamic for the
Linear-only transformer, as onefit exports them), NNCF post-training quantization of the ONNX file
run on ONNX Runtime, OpenVINO fp32 and NNCF int8 on OpenVINO (NNCF's transformer scheme for
MiniLM). onefit: ``onefit run`` on the teacher with both runtimes as targets (``--qat``: the family
also trained at 8 bits, its int8 files built from that). Every row's metric is its own file's on
the test set; onefit picks its model on the validation split (the peers' best is picked on the
test set, which favours them). Latency: 2 threads, medians of interleaved rounds at batch 1 and
64, as ratios to the teacher on ONNX Runtime fp32 in the same round.

    python bench/peers.py              # bench/results/peers.{json,md}
    python bench/peers.py --qat --stem peers_qat   # the family trained at 8 bits too
    python bench/peers.py --model minilm           # bench/results/peers_minilm.{json,md}
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))  # so the run config can name peers:trained_teacher

RESULTS = Path(__file__).parent / "results"
TEACHER = {"in_channels": 1, "widths": [32, 64, 128], "blocks": [2, 2, 2], "classes": 10}
MIN_COSINE = 0.95  # MiniLM's bar: a file's sentence embeddings at least this close to the original's


@dataclass
class Setup:
    """What differs between the two models: the teacher, its data and metric, how a peer prunes it,
    the bar a row must clear and the run config onefit gets."""

    title: str
    metric: str  # the metric's name in the tables
    teacher: torch.nn.Module
    teacher_seconds: float
    train: object
    val: object
    test: object
    task: object  # onefit's task (None: classification)
    example: tuple  # one sample's inputs, batch 1
    prune: Callable  # (ratio, global_pruning) -> a fine-tuned pruned model
    bar: str  # the bar in words
    passes: Callable  # (test metric, the teacher's on ONNX Runtime fp32) -> within the bar
    chooses: Callable  # (validation error in onefit's manifest, the teacher's validation metric) -> within the bar
    config: Callable  # (the teacher's weights file, args) -> onefit run's config
    nncf: dict  # NNCF's options for this model
    calibration: list = field(init=False)  # 10 training batches, the same for every quantization path

    def __post_init__(self):
        self.calibration = [b for _, b in zip(range(10), self.train)]

    def inputs(self, batch: int) -> tuple:
        return tuple(x.repeat(batch, *[1] * (x.dim() - 1)) for x in self.example)


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


def cnn_setup(args) -> Setup:
    import onefit
    from onefit.data import mnist5k, validation_split

    train_all, test = mnist5k(batch_size=64, seed=0)
    train, val = validation_split(train_all, seed=0)  # the same split onefit run holds out
    teacher = onefit.zoo.resnet(**TEACHER)
    t0 = time.perf_counter()
    train_epochs(teacher, train, args.teacher_epochs, lr=3e-3)
    seconds = time.perf_counter() - t0

    def prune(ratio: float, global_pruning: bool):
        import torch_pruning as tp

        model = copy.deepcopy(teacher).train()
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=[model.head])
        pruner.step()
        train_epochs(model, train, args.finetune_epochs, lr=1e-3)
        return model.eval()

    def config(weights: Path, args) -> dict:
        return {
            "seed": 0,
            "model": {"factory": "peers:trained_teacher", "kwargs": {"weights": str(weights)}},
            "data": {"bundled": "mnist5k", "kwargs": {"batch_size": 64}},
            "elastic": {"width": [0.125, 0.25, 0.375, 0.5, 0.75, 1.0],
                        # 8-bit quantization-aware training: one bits dimension, the runtimes' int8 scheme
                        **({"bits": [8], "activation_bits": 8, "bits_shared": True} if args.qat else {})},
            "train": {"recipe": "sortednet", "epochs": args.family_epochs, "lr": 1e-3,
                      "config": {"distill": args.distill}}}

    example = (next(iter(test))[0][:1],)
    return Setup("MNIST-5k ResNet", "test acc %", teacher, seconds, train, val, test, None, example, prune,
                 "accuracy drop at most 1.0 point", lambda value, base: base - value <= 1.0,
                 lambda error, teacher_validation: 100 * (1 - error) >= teacher_validation - 1.0, config, {})


def minilm_setup(args) -> Setup:
    import nncf

    from onefit.data import validation_split
    from onefit.data.text import sentences
    from onefit.tasks.distillation import DistillationTask
    from onefit.train import train
    from onefit.train.plain import PlainRecipe
    from onefit.zoo.minilm import embedder

    limit = 96 if args.quick else None  # sentences of each split (all: 1,154 training, 145 test)
    train_all, test = sentences(batch_size=16, length=32, limit=limit, seed=0)
    train_split, val = validation_split(train_all, seed=0)  # the same split onefit run holds out
    teacher = embedder()
    task = DistillationTask(teacher, "cosine", n_inputs=2)
    example = tuple(x[:1] for x in next(iter(test)))

    def prune(ratio: float, global_pruning: bool):
        import torch_pruning as tp
        from transformers.models.bert.modeling_bert import BertSelfAttention

        model = copy.deepcopy(teacher).train()
        attention = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
        heads = {linear: m.num_attention_heads for m in attention for linear in (m.query, m.key, m.value)}
        embeddings = model.encoder.embeddings  # the hidden size stays: the embeddings are compared with the original's
        ignored = [embeddings.word_embeddings, embeddings.position_embeddings, embeddings.token_type_embeddings,
                   *([model.encoder.pooler] if getattr(model.encoder, "pooler", None) is not None else [])]
        pruner = tp.pruner.MetaPruner(model, tuple(x.repeat(2, 1) for x in example),
                                      importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                      global_pruning=global_pruning, ignored_layers=ignored, num_heads=heads,
                                      prune_head_dims=False, prune_num_heads=True, head_pruning_ratio=ratio)
        pruner.step()
        for m in attention:  # Torch-Pruning's recipe for Hugging Face BERT: the modules' own head counts
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features
        train(model, train_split, PlainRecipe(), epochs=args.finetune_epochs, task=task,
              optimizer=torch.optim.Adam(model.parameters(), lr=args.minilm_lr), progress=False)
        return model.eval()

    def config(_weights: Path, args) -> dict:
        return {
            "seed": 0,
            "model": {"zoo": "minilm"},
            "data": {"bundled": "sentences", "kwargs": {"batch_size": 16, "length": 32, "limit": limit}},
            "task": {"name": "distillation", "kind": "cosine", "inputs": 2},
            "elastic": {"width": [0.25, 0.5, 0.625, 0.75, 0.875, 1.0],
                        **({"bits": [8], "activation_bits": 8, "bits_shared": True} if args.qat else {})},
            "train": {"recipe": "sortednet", "epochs": args.family_epochs, "lr": args.minilm_lr,
                      "config": {"distill": "none"}}}  # the task distils from the original

    return Setup("all-MiniLM-L6-v2 sentence embeddings", "test cosine", teacher, 0.0, train_split, val, test, task,
                 example, prune, f"cosine to the original at least {MIN_COSINE}",
                 lambda value, _: value >= MIN_COSINE, lambda error, _: 1 - error >= MIN_COSINE, config,
                 {"model_type": nncf.ModelType.TRANSFORMER})


def nncf_onnx_int8(onnx_path: Path, target: Path, calibration, options: dict) -> Path:
    """NNCF's post-training quantization of an ONNX file, to run on ONNX Runtime."""
    import nncf
    import onnx

    model = onnx.load(str(onnx_path))
    names = [i.name for i in model.graph.input]
    dataset = nncf.Dataset(calibration, lambda batch: {n: x.numpy() for n, x in zip(names, batch)})
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration), **options)  # NNCF counts batches
    onnx.save(quantized, str(target))
    return target


def pipelines(name: str, module, folder: Path, setup: Setup) -> list[dict]:
    """The module through every peer runtime path; each row its file, runtime and test metric."""
    from onefit.export.onnx import accuracy_change
    from onefit.runtimes import runtime
    from onefit.runtimes.cpu import int8_weights

    ort, ov = runtime("onnxruntime"), runtime("openvino")
    reduce_range = int8_weights()[0]
    rows = []
    for rt, precision, label in ((ort, "fp32", "ONNX Runtime fp32"), (ort, "int8", "ONNX Runtime {} int8"),
                                 (ov, "fp32", "OpenVINO fp32"), (ov, "int8", "NNCF int8 on OpenVINO")):
        try:
            built = rt.build(module, folder / f"{name}-{rt.name}-{precision}", precision, examples=setup.example,
                             calibration=setup.calibration, eval_data=setup.test, task=setup.task,
                             reduce_range=reduce_range)
        except Exception as err:  # a pipeline that fails its parity floor is reported, not hidden
            rows.append({"model": name, "pipeline": label.format("").replace("  ", " "), "runtime": rt.name,
                         "failed": str(err)[:200]})
            continue
        rows.append({"model": name, "pipeline": label.format("static" if built.method == "static-qdq" else "dynamic"),
                     "runtime": rt.name, "path": str(built.path), "accuracy": built.metric["onnx"],
                     "cosine": built.cosine})
        if (rt.name, precision) == ("onnxruntime", "fp32"):
            fp32 = built.path
    target = nncf_onnx_int8(fp32, folder / f"{name}-nncf-onnx-int8.onnx", setup.calibration, setup.nncf)
    session = ort.session(target)
    rows.append({"model": name, "pipeline": "NNCF int8 on ONNX Runtime", "runtime": "onnxruntime", "path": str(target),
                 "accuracy": accuracy_change(module, session, setup.test, setup.task)["onnx"]})
    return rows


def onefit_run(weights: Path, folder: Path, setup: Setup, args) -> tuple[list[dict], float, dict]:
    from onefit.run import parse_config, run

    config = parse_config({
        **setup.config(weights, args),
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
             "validation_error": m["validation"]["error"], "params": m["params"], "macs": m["macs"]}
            for m in manifest["models"] for f in m["files"]]
    return rows, seconds, manifest["cpu"]


def time_rounds(rows: list[dict], setup: Setup, rounds: int, repeats: int) -> None:
    """Medians of interleaved rounds at batch 1 and 64 (2 threads), in place; each round every file once."""
    from onefit.runtimes import runtime

    live = [r for r in rows if "path" in r]
    for row in live:
        row["rounds"] = {1: [], 64: []}
    for _ in range(rounds):
        for batch in (1, 64):
            inputs = setup.inputs(batch)
            for row in live:
                latency = runtime(row["runtime"]).latency(Path(row["path"]), inputs, threads=2, repeats=repeats)
                row["rounds"][batch].append(latency.median_ms)
    for row in live:
        row["ms"] = {b: statistics.median(v) for b, v in row["rounds"].items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn", choices=("cnn", "minilm"),
                        help="the MNIST-5k ResNet this script trains, or the pretrained all-MiniLM-L6-v2")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch each, one ratio, few evaluations")
    parser.add_argument("--teacher-epochs", type=int, default=8, help="the CNN teacher's training (MiniLM comes trained)")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--family-epochs", type=int, default=10)
    parser.add_argument("--minilm-lr", type=float, default=5e-5,
                        help="MiniLM's learning rate, for the peers' fine-tuning and the family alike")
    parser.add_argument("--distill", default="inplace", choices=("inplace", "teacher", "none"),
                        help="the CNN family's distillation: from the largest sub-model, from the trained teacher, "
                             "or none (MiniLM's task distils from the original)")
    parser.add_argument("--qat", action="store_true",
                        help="train the family at 8 bits too (one shared bits dimension): int8 files keep its ranges")
    parser.add_argument("--budget", type=int, default=80)
    parser.add_argument("--max-models", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30, help="runs per file and round (the median is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="the results' file names: STEM.json, STEM.md (default: peers, peers_minilm)")
    args = parser.parse_args(argv)
    args.stem = args.stem or ("peers" if args.model == "cnn" else "peers_minilm")
    ratios = (0.3, 0.5, 0.7)
    if args.quick:
        args.teacher_epochs = args.finetune_epochs = args.family_epochs = args.rounds = 1
        args.budget, args.max_models, args.repeats, ratios = 4, 1, 10, (0.5,)
    import safetensors.torch

    from onefit.cost.latency import environment

    torch.set_num_threads(2)
    torch.manual_seed(0)
    setup = (cnn_setup if args.model == "cnn" else minilm_setup)(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "teacher.safetensors"
        safetensors.torch.save_file(setup.teacher.state_dict(), str(weights))
        rows = pipelines("teacher", setup.teacher, tmp, setup)
        t0 = time.perf_counter()
        for ratio in ratios:
            for mode in ("uniform", "global"):
                pruned = setup.prune(ratio, mode == "global")
                name = f"TP {mode} {int(100 * ratio)}%"
                for row in pipelines(name.replace(" ", "_").replace("%", ""), pruned, tmp, setup):
                    rows.append({**row, "model": name, "params": sum(p.numel() for p in pruned.parameters())})
        peers_seconds = time.perf_counter() - t0
        ours, onefit_seconds, cpu = onefit_run(weights, tmp / "onefit", setup, args)
        rows += ours
        time_rounds(rows, setup, args.rounds, repeats=args.repeats)
    result = summarize(rows, setup, peers_seconds, onefit_seconds)
    result.update(environment=environment(), cpu=cpu, args=vars(args) | {"out": str(args.out)},
                  command="python bench/peers.py " + " ".join(sys.argv[1:] if argv is None else argv))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / f"{args.stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def summarize(rows: list[dict], setup: Setup, peers_seconds: float, onefit_seconds: float) -> dict:
    import onefit

    base = next(r for r in rows if r["model"] == "teacher" and r["pipeline"] == "ONNX Runtime fp32")
    teacher_validation = onefit.evaluate(setup.teacher, setup.val, setup.task)
    for r in rows:
        if "ms" in r:
            r["speedup"] = {b: base["ms"][b] / r["ms"][b] for b in r["ms"]}
            r["drop"] = base["accuracy"] - r["accuracy"]
            r["passes"] = setup.passes(r["accuracy"], base["accuracy"])
    targets = {}
    for runtime in ("onnxruntime", "openvino"):
        peers = [r for r in rows if r["runtime"] == runtime and "ms" in r and not r["model"].startswith("onefit")
                 and r["passes"]]
        # onefit's pick sees validation only: its sub-models within the bar on the validation split
        eligible = [r for r in rows if r["runtime"] == runtime and "ms" in r and r["model"].startswith("onefit")
                    and setup.chooses(r["validation_error"], teacher_validation)]
        for batch in (1, 64):
            peer = min(peers, key=lambda r: r["ms"][batch], default=None)
            pick = min(eligible, key=lambda r: r["ms"][batch], default=None)
            ratio = peer and pick and peer["ms"][batch] / pick["ms"][batch]
            target = 2.0 if batch == 64 else 1.5
            targets[f"{runtime} b={batch}"] = {
                "best_peer": peer and {k: peer[k] for k in ("model", "pipeline", "accuracy", "drop", "ms")},
                "onefit": pick and {k: pick[k] for k in ("model", "pipeline", "accuracy", "drop", "ms", "passes")},
                "ratio": ratio, "target": target, "met": bool(ratio and ratio >= target and pick["passes"])}
    params = sum(p.numel() for p in setup.teacher.parameters())
    return {"rows": rows, "targets": targets, "title": setup.title, "metric": setup.metric, "bar": setup.bar,
            "teacher_validation": teacher_validation, "teacher_params": params,
            "seconds": {"teacher": setup.teacher_seconds, "peers_sweep": peers_seconds, "onefit_run": onefit_seconds}}


def markdown(result: dict) -> str:
    base = next(r for r in result["rows"] if r["model"] == "teacher" and r["pipeline"] == "ONNX Runtime fp32")
    metric, digits = result["metric"], (2 if "acc" in result["metric"] else 4)
    lines = [f"# onefit against Torch-Pruning + ONNX Runtime / NNCF / OpenVINO ({result['title']})\n",
             f"`{result['command'].strip()}`; {result['environment']['cpu']}; int8: {result['cpu']['int8_weights']}. "
             f"Teacher: {base['accuracy']:.{digits}f} {metric} on ONNX Runtime fp32; latency at 2 threads, medians of "
             f"{result['args']['rounds']} interleaved rounds; x = speed-up over the teacher on ONNX Runtime fp32 "
             f"({base['ms'][1]:.3f} ms at batch 1, {base['ms'][64]:.3f} ms at batch 64) in the same run.\n",
             f"## Targets ({result['bar']})\n",
             f"onefit's pick: the fastest file of a sub-model within the bar on the validation split (the teacher's "
             f"validation metric: {result['teacher_validation']:.{digits}f}); '-' when none is.\n",
             "| runtime, batch | best peer (picked on test) | its ms | onefit (picked on validation) | its ms | "
             "onefit / peer speed | target | met |", "|---|---|---:|---|---:|---:|---:|---|"]

    def who(row: dict | None) -> str:
        return f"{row['model']}, {row['pipeline']} ({row['accuracy']:.{digits}f})" if row else "-"

    for key, t in result["targets"].items():
        b = int(key.split("=")[1])
        peer, ours = t["best_peer"], t["onefit"]
        ms = [f"{r['ms'][b]:.3f}" if r else "-" for r in (peer, ours)]
        ratio = f"{t['ratio']:.2f}x" if t["ratio"] else "-"
        met = "yes" if t["met"] else ("no (on test it misses the bar)" if ours and not ours["passes"] else "no")
        lines.append(f"| {key} | {who(peer)} | {ms[0]} | {who(ours)} | {ms[1]} | {ratio} | {t['target']}x | {met} |")
    s = result["seconds"]
    lines += ["", f"Wall time: the peers' whole sweep (pruning, fine-tuning and every quantization path) "
                  f"{s['peers_sweep']:.0f} s; onefit run (family training, search, export, timing) {s['onefit_run']:.0f} s "
                  f"({s['onefit_run'] / max(s['peers_sweep'], 1e-9):.2f}x; target at most 3x); the teacher's own "
                  f"training {s['teacher']:.0f} s.", "", "## Every pipeline\n",
              f"| model | pipeline | params | {metric} | drop | ms b=1 | x b=1 | ms b=64 | x b=64 | "
              "spread b=64 (min-max ms) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        params = f"{r['params']:,}" if "params" in r else f"{result.get('teacher_params', 0):,}"
        if "ms" not in r:
            lines.append(f"| {r['model']} | {r['pipeline']} | {params} | failed: {r['failed'][:80]} | | | | | | |")
            continue
        spread = f"{min(r['rounds'][64]):.3f}-{max(r['rounds'][64]):.3f}"
        lines.append(f"| {r['model']} | {r['pipeline']} | {params} | {r['accuracy']:.{digits}f} | "
                     f"{r['drop']:+.{digits}f} | {r['ms'][1]:.3f} | {r['speedup'][1]:.2f} | {r['ms'][64]:.3f} | "
                     f"{r['speedup'][64]:.2f} | {spread} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
