"""Latency on real runtimes, side by side in one run: torch eager vs ONNX Runtime fp32 vs ONNX
Runtime int8, at batch 1 and 64, for sub-models of the digits ResNet family and for the real
pretrained all-MiniLM-L6-v2; accuracy (or embedding cosine) of each; the latency model's error on
held-out sub-models; efficiency against this machine's roofline.

    python bench/latency.py            # full run, writes bench/results/latency.{json,md}
    python bench/latency.py --quick    # a smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import onefit
from onefit.cost import LatencyModel, environment, machine_roofline, measure_latency, spearman
from onefit.data import digits
from onefit.report.tables import spread
from onefit.export import export, run_onnx
from onefit.export.onnx import onnx_session
from onefit.select import distinct_chain

RESULTS = Path(__file__).parent / "results"


def trained_family(epochs: int, seed: int = 0, small: bool = False):
    train_data, test_data = digits(batch_size=64, seed=seed)
    torch.manual_seed(seed)
    model = onefit.zoo.resnet(widths=(8, 16) if small else (32, 64), blocks=(2, 2) if small else (3, 3))
    onefit.train_plain(model, train_data, epochs, progress=False)
    family = onefit.sort_(onefit.elasticize(model, (next(iter(test_data))[0][:1],)))
    onefit.train(family, train_data, onefit.SortedNetRecipe(onefit.SortedNetConfig(seed=seed)), epochs=epochs,
                 progress=False)
    return family, train_data, test_data


def batch_of(data, n: int) -> torch.Tensor:
    xs = torch.cat([x for x, _ in data])
    return xs[:n] if len(xs) >= n else xs.repeat(n // len(xs) + 1, 1, 1, 1)[:n]


def three_backends(module, fp32_path, int8_path, example, repeats: int, cost: dict) -> dict:
    """Latency of the three runtimes on one input, measured back to back, each with its roofline."""
    return {name: measure_latency(target, example, backend=backend, repeats=repeats, warmup=max(3, repeats // 10),
                                  cost=cost, int8=name == "ort_int8").to_json()
            for name, target, backend in (("eager", module, "eager"), ("ort_fp32", fp32_path, "onnxruntime"),
                                          ("ort_int8", int8_path, "onnxruntime"))}


def cnn_part(args, tmp: Path) -> dict:
    family, train_data, test_data = trained_family(args.epochs, small=args.quick)
    rows = []
    for i, arch in enumerate(spread(distinct_chain(family), args.submodels)):
        module = onefit.recalibrate_bn(family.extract(arch), train_data)
        example = batch_of(test_data, 1)
        fp32 = export(module, tmp / f"cnn{i}.onnx", (example,), eval_data=test_data)
        int8 = export(module, tmp / f"cnn{i}-int8.onnx", (example,), quantize="int8", calibration=train_data,
                      eval_data=test_data)
        cost = onefit.costs(family, arch)
        row = {"arch": arch, **cost, "accuracy": {"torch": fp32.accuracy["torch"], "ort_fp32": fp32.accuracy["onnx"],
                                                 "ort_int8": int8.accuracy["onnx"]},
               "bytes": {"fp32": fp32.bytes, "int8": int8.bytes}}
        for batch in (1, 64):
            x = batch_of(test_data, batch)
            row[f"b{batch}"] = three_backends(module, fp32.path, int8.path, x, args.repeats, cost)
        rows.append(row)
        print(f"  cnn {i}: params {cost['params']:,} b1 eager {row['b1']['eager']['median_ms']:.3f} "
              f"ort {row['b1']['ort_fp32']['median_ms']:.3f} int8 {row['b1']['ort_int8']['median_ms']:.3f} | b64 "
              f"eager {row['b64']['eager']['median_ms']:.2f} ort {row['b64']['ort_fp32']['median_ms']:.2f} "
              f"int8 {row['b64']['ort_int8']['median_ms']:.2f} ms", flush=True)
    return {"rows": rows, "latency_model": latency_model_part(family, args, tmp)}


def spread_archs(space, n: int, rng: random.Random) -> list[dict]:
    """Random archs across the whole range of sizes: each draws a scale t in [0, 1], then every
    dimension a choice near t along its own choices (uniform sampling alone crowds the middle)."""
    archs = []
    for _ in range(n):
        t = rng.random()
        archs.append({d.name: d.choices[min(len(d.choices) - 1, max(0, round(t * (len(d.choices) - 1)
                                                                          + rng.uniform(-0.6, 0.6))))]
                      for d in space})
    return archs


def interleaved_medians(paths: list[Path], x: torch.Tensor, repeats: int, passes: int) -> tuple[list, list]:
    """Median over ``passes`` passes, each over all models in a new random order, so that a slow
    spell of the machine is spread over all of them; also returns the last two passes."""
    runs = []
    for seed in range(passes):
        order = list(range(len(paths)))
        random.Random(seed).shuffle(order)
        times = {i: measure_latency(paths[i], x, repeats=repeats, warmup=10).median_ms for i in order}
        runs.append([times[i] for i in range(len(paths))])
    return [statistics.median(r[i] for r in runs) for i in range(len(paths))], runs[-2:]


def latency_model_part(family, args, tmp: Path) -> dict:
    """Fit on measured sub-models, report the error on sub-models it never saw, and how far two
    passes over the same sub-models differ (the floor any model can reach on this machine)."""
    archs = spread_archs(family.space, args.fit + args.held_out, random.Random(1))
    paths = [tmp / f"lm{i}.onnx" for i in range(len(archs))]
    x1 = torch.randn(1, *family.example_inputs[0].shape[1:])
    for arch, path in zip(archs, paths):
        export(family.extract(arch), path, (x1,))
    result = {}
    for batch in (1, 64):
        x = torch.randn(batch, *family.example_inputs[0].shape[1:])
        repeats = args.repeats * (3 if batch == 1 else 1)  # sub-millisecond figures need more samples
        measured, (first, second) = interleaved_medians(paths, x, repeats, passes=3)
        model = LatencyModel.fit(family, archs[: args.fit], measured[: args.fit], backend="onnxruntime", batch=batch)
        family.latency_models[f"onnxruntime-b{batch}"] = model
        result[f"b{batch}"] = {
            "fit": model.fit_error,
            "held_out": model.error(family, archs[args.fit:], measured[args.fit:]),
            "repeat_mape": statistics.fmean(abs(a - b) / b for a, b in zip(first, second)),
            "repeat_spearman": spearman(first, second),
            "archs": archs, "measured_ms": measured,
        }
        print(f"  latency model b{batch}: held-out {result[f'b{batch}']['held_out']}, pass-to-pass MAPE "
              f"{result[f'b{batch}']['repeat_mape']:.3f}", flush=True)
    return result


def minilm_part(args, tmp: Path) -> dict:
    """Sub-models of the real pretrained all-MiniLM-L6-v2 along its nested chain (not retrained:
    the smaller ones drift from the original's embeddings, and the table says by how much)."""
    from onefit.zoo.minilm import SENTENCES, minilm, tokenize

    model, tokenizer = minilm()
    ids, mask = tokenize(tokenizer, SENTENCES)
    family = onefit.sort_(onefit.elasticize(model, (ids[:2], mask[:2])))
    with torch.no_grad():
        reference = model(ids, mask)
    rows = []
    for i, arch in enumerate(spread(distinct_chain(family), args.minilm_submodels)):
        sub = family.extract(arch).eval()
        fp32 = export(sub, tmp / f"minilm{i}.onnx", (ids[:2], mask[:2]))
        int8 = export(sub, tmp / f"minilm{i}-int8.onnx", (ids[:2], mask[:2]), quantize="int8")
        with torch.no_grad():
            own = sub(ids, mask)
        got = torch.from_numpy(run_onnx(onnx_session(Path(int8.path)), (ids, mask)))
        cost = onefit.costs(family, arch)
        row = {"arch": arch, **cost, "bytes": {"fp32": fp32.bytes, "int8": int8.bytes},
               "cosine_to_original": torch.nn.functional.cosine_similarity(own, reference, dim=-1).tolist(),
               "int8_cosine_to_fp32": torch.nn.functional.cosine_similarity(got, own, dim=-1).tolist()}
        for batch in (1, 64):
            reps = max(args.repeats // (2 if batch == 1 else 20), 5)
            x = (ids.repeat(6, 1)[:batch], mask.repeat(6, 1)[:batch])
            row[f"b{batch}"] = three_backends(sub, fp32.path, int8.path, x, reps, cost)
        rows.append(row)
        print(f"  minilm {i}: params {cost['params']:,} b1 " + ", ".join(
            f"{k} {v['median_ms']:.2f}" for k, v in row["b1"].items()) + " | b64 " + ", ".join(
            f"{k} {v['median_ms']:.1f}" for k, v in row["b64"].items()) + " ms", flush=True)
    return {"sequence": ids.shape[1], "sentences": len(SENTENCES), "rows": rows}


def ratio_stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(cnn: dict, minilm: dict | None) -> dict:
    rows = cnn["rows"]
    s = {
        "cnn_ort_fp32_speedup_over_eager_b1": ratio_stats([r["b1"]["eager"]["median_ms"] / r["b1"]["ort_fp32"]["median_ms"] for r in rows]),
        "cnn_int8_speedup_over_ort_fp32_b64": ratio_stats([r["b64"]["ort_fp32"]["median_ms"] / r["b64"]["ort_int8"]["median_ms"] for r in rows]),
        "cnn_int8_accuracy_change": ratio_stats([r["accuracy"]["ort_int8"] - r["accuracy"]["ort_fp32"] for r in rows]),
        "latency_model": cnn["latency_model"],
    }
    if minilm:
        s["minilm_int8_min_cosine"] = min(c for r in minilm["rows"] for c in r["int8_cosine_to_fp32"])
    return s


def markdown(result: dict) -> str:
    s, env, roof = result["summary"], result["environment"], result["roofline"]
    lines = [
        "# Latency on real runtimes\n",
        f"`{result['command']}` on {env['cpu']} ({env['cores']} cores, {result['threads']} threads), torch "
        f"{env['torch']}, onnxruntime {env.get('onnxruntime')}. Medians of {result['repeats']} repeats; p90 in the JSON.",
        f"Roofline: fp32 {roof['fp32_gflops']} GFLOP/s, int8 {roof['int8_gops']} GOP/s, memory {roof['bandwidth_gbs']} GB/s.\n",
        "## digits ResNet family (latency in ms)\n",
        "| params | MACs | acc torch / fp32 / int8 | b1 eager | b1 ORT fp32 | b1 ORT int8 | b64 eager | b64 ORT fp32 | b64 ORT int8 | b64 fp32 efficiency | b64 bound |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["cnn"]["rows"]:
        a, b1, b64 = r["accuracy"], r["b1"], r["b64"]
        lines.append(
            f"| {r['params']:,} | {r['macs']:,} | {a['torch']:.1f} / {a['ort_fp32']:.1f} / {a['ort_int8']:.1f} | "
            f"{b1['eager']['median_ms']:.3f} | {b1['ort_fp32']['median_ms']:.3f} | {b1['ort_int8']['median_ms']:.3f} | "
            f"{b64['eager']['median_ms']:.2f} | {b64['ort_fp32']['median_ms']:.2f} | {b64['ort_int8']['median_ms']:.2f} | "
            f"{b64['ort_fp32']['efficiency']:.1%} | {b64['ort_fp32']['bound_ms']:.3f} |")

    def fmt(d):
        return f"{d['median']:.2f} (range {d['min']:.2f}–{d['max']:.2f})"

    lm = s["latency_model"]
    lines += [
        "",
        f"- ORT fp32 speed-up over eager at batch 1: **{fmt(s['cnn_ort_fp32_speedup_over_eager_b1'])}×** (target ≥ 1.5×)",
        f"- ORT int8 speed-up over ORT fp32 at batch 64: **{fmt(s['cnn_int8_speedup_over_ort_fp32_b64'])}×** (target ≥ 1.5×)",
        f"- int8 accuracy change (points): **{fmt(s['cnn_int8_accuracy_change'])}** (target ≥ −0.5)",
    ]
    for b in ("b1", "b64"):
        h = lm[b]["held_out"]
        lines.append(f"- latency model, ORT fp32 {b}, {h['n']} held-out sub-models: MAPE **{h['mape']:.1%}**, "
                     f"Spearman **{h['spearman']:.3f}** (targets ≤ 10%, ≥ 0.9; median of 3 interleaved passes); two "
                     f"passes over the same sub-models differ by {lm[b]['repeat_mape']:.1%} "
                     f"(Spearman {lm[b]['repeat_spearman']:.3f})")
    if result.get("minilm"):
        m = result["minilm"]
        lines += ["", f"## all-MiniLM-L6-v2 sub-models (sequence length {m['sequence']}, latency in ms)\n",
                  "Pretrained weights, importance-sorted, not retrained: cosine to the original shows how far each "
                  "sub-model drifts before any training.\n",
                  "| params | MACs | cosine to original | int8 cosine to fp32 | b1 eager | b1 ORT fp32 | b1 ORT int8 | "
                  "b64 eager | b64 ORT fp32 | b64 ORT int8 | b64 fp32 efficiency |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in m["rows"]:
            b1, b64 = r["b1"], r["b64"]
            lines.append(f"| {r['params']:,} | {r['macs']:,} | {min(r['cosine_to_original']):.3f} | "
                         f"{min(r['int8_cosine_to_fp32']):.4f} | {b1['eager']['median_ms']:.2f} | "
                         f"{b1['ort_fp32']['median_ms']:.2f} | {b1['ort_int8']['median_ms']:.2f} | "
                         f"{b64['eager']['median_ms']:.1f} | {b64['ort_fp32']['median_ms']:.1f} | "
                         f"{b64['ort_int8']['median_ms']:.1f} | {b64['ort_fp32']['efficiency']:.1%} |")
        lines.append(f"\n- int8 embedding cosine to fp32, min over sub-models and {m['sentences']} sentences: "
                     f"**{s['minilm_int8_min_cosine']:.4f}** (target ≥ 0.97); cosines are minima over the sentences")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--submodels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--fit", type=int, default=32, help="sub-models the latency model is fitted on")
    parser.add_argument("--held-out", type=int, default=16, help="sub-models it is tested on")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--minilm-submodels", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 2 sub-models, few repeats, no MiniLM")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.submodels, args.repeats, args.fit, args.held_out, args.no_minilm = 1, 2, 3, 6, 3, True
    started = time.perf_counter()
    roof = machine_roofline()
    with tempfile.TemporaryDirectory() as tmp:
        cnn = cnn_part(args, Path(tmp))
        minilm = None if args.no_minilm else minilm_part(args, Path(tmp))
    result = {
        "command": "python bench/latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(), "threads": torch.get_num_threads(), "repeats": args.repeats,
        "roofline": roof.__dict__, "cnn": cnn, "minilm": minilm, "summary": summarize(cnn, minilm),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(result, indent=1))
    (args.out / "latency.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
