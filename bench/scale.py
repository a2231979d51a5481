"""Scaling out: family training under torchrun, search workers sharing one PostgreSQL study, and
models too large to copy. Writes bench/results/scale.{json,md}.

    python bench/scale.py                 # everything (a few minutes)
    python bench/scale.py --quick         # fewer repeats and a smaller budget (a smoke run)

1. Training: samples per second of SortedNet on the digits ResNet family, one epoch, the same
   global batch: 1 process with 1 and with 2 threads, 2 processes (torchrun, gloo) with 1 thread
   each; interleaved repeats, medians and spread.
2. Search: ``onefit search RUN --storage postgresql://... --workers-share`` with 1, 2 and 4
   workers on one study (a throw-away server, tests/postgres.py), the same budget: the study's
   evaluations per minute (wall, and between the first and last recorded trial), duplicates.
3. The database's share: seconds per claim + record + finish on PostgreSQL, and the projection
   to 8 and 64 workers that follows from it.
4. Memory: elasticizing a TinyLlama-1.1B-shaped decoder (random weights) in place, and
   ``onefit inspect`` of a Llama-2-7B config on the meta device.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests"))

TRAIN_RANK = """
import json, os, sys, time, torch
import onefit
from onefit.train import SortedNetRecipe, distributed, train
group = distributed.init_from_env()
torch.manual_seed(0)
train_data, _ = onefit.data.digits(batch_size=64)
batches = [b for b in train_data][:-1]  # whole batches only: 64 splits evenly
family = onefit.elasticize(onefit.zoo.resnet(in_channels=1, widths=(32, 64), blocks=(3, 3), classes=10),
                           (torch.randn(1, 1, 8, 8),), onefit.ElasticConfig(width=(0.25, 0.5, 0.75, 1.0)))
train(family, batches[:2], SortedNetRecipe(), epochs=1, progress=False, cosine=False)  # warm-up
t0 = time.perf_counter()
train(family, batches, SortedNetRecipe(), epochs=1, progress=False, cosine=False)
seconds = time.perf_counter() - t0
if group is None or group.leader:
    print(json.dumps({"samples": 64 * len(batches), "seconds": seconds}))
distributed.shutdown()
"""


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}


def train_once(processes: int, threads: int) -> float:
    script = Path(tempfile.mkdtemp()) / "rank.py"
    script.write_text(TRAIN_RANK)
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
               if processes > 1 else [sys.executable]) + [str(script)]
    done = subprocess.run(command, env=_env(threads), capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    line = [l for l in done.stdout.splitlines() if l.startswith("{")][-1]
    result = json.loads(line)
    return result["samples"] / result["seconds"]


def training(repeats: int) -> list[dict]:
    settings = [(1, 1), (1, 2), (2, 1)]
    rates: dict[tuple, list] = {s: [] for s in settings}
    for _ in range(repeats):  # interleaved, so drifts in the machine's load hit every setting alike
        for s in settings:
            rates[s].append(train_once(*s))
            print(f"train processes={s[0]} threads={s[1]}: {rates[s][-1]:.0f} samples/s", flush=True)
    return [{"processes": p, "threads": t, "samples_per_s": statistics.median(r), "min": min(r), "max": max(r),
             "repeats": len(r)} for (p, t), r in rates.items()]


def _run_folder(folder: Path) -> None:
    from onefit.demo import example_config
    from onefit.run import run

    config = example_config("digits", ["pretrain.epochs=2", "train.epochs=3", "search.budget=1",
                                       "model.kwargs.widths=[16, 32]", "model.kwargs.blocks=[2, 2]"])
    run(config, folder, progress=False, echo=lambda line: None)


def search_workers(url: str, folder: Path, workers: int, budget: int) -> dict:
    import optuna

    name = f"scale{workers}"
    command = [sys.executable, "-m", "onefit", "search", str(folder), "--budget", str(budget), "--searcher", "nsga2",
               "--storage", url, "--study", name, "--workers-share", "--claim-timeout", "60"]
    started = time.perf_counter()
    jobs = [subprocess.Popen(command, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(workers)]
    outputs = [job.communicate(timeout=1800)[0] for job in jobs]
    wall = time.perf_counter() - started
    if any(job.returncode for job in jobs):
        raise RuntimeError("\n".join(o[-2000:] for o in outputs))
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    keys = [tuple(sorted(t.params.items())) for t in trials]
    done = sorted(t.datetime_complete.timestamp() for t in trials)
    steady = (len(done) - 1) / (done[-1] - done[0]) * 60 if len(done) > 1 and done[-1] > done[0] else float("nan")
    per_eval = statistics.median(t.user_attrs["onefit"]["seconds"] for t in trials)
    return {"workers": workers, "budget": budget, "evaluated": len(trials), "distinct": len(set(keys)),
            "duplicates": len(keys) - len(set(keys)), "wall_s": round(wall, 1),
            "evals_per_min_wall": round(len(trials) / wall * 60, 1), "evals_per_min_steady": round(steady, 1),
            "median_eval_s": round(per_eval, 3)}


def database_share(url: str, n: int = 100) -> dict:
    """Seconds the database takes per evaluation: a claim, the trial's record, its finish, one look."""
    from onefit.search.claims import Claims
    from onefit.search.problem import toy_problem
    from onefit.search.study import Study

    problem = toy_problem()
    study = Study(url, problem, "overhead")
    claims = Claims(study.url, "overhead")
    archs = [problem.space.sample(__import__("random").Random(i)) for i in range(10 * n)]
    trial = problem.evaluate(archs[0])
    started, count = time.perf_counter(), 0
    for arch in archs:
        key = problem.key(arch) + str(count)
        if claims.claim(key, dict(arch), budget=10 ** 9):
            study.record(trial)
            claims.finish(key)
            study.new_trials()
            count += 1
        if count == n:
            break
    return {"db_s_per_eval": (time.perf_counter() - started) / count, "n": count}


MEMORY = """
import json, resource, time, torch, transformers, onefit
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
config = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                  num_attention_heads=32, num_key_value_heads=4, use_cache=False)  # TinyLlama-1.1B
start = peak()
model = transformers.LlamaForCausalLM(config).eval()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
built = peak()
t0 = time.perf_counter()
family = onefit.elasticize(model, (torch.zeros(1, 8, dtype=torch.long),), copy_model=False)
seconds = time.perf_counter() - t0
meta = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32)  # Llama-2-7B
t1 = time.perf_counter()
with torch.device("meta"):
    big = transformers.LlamaForCausalLM(meta)
report = onefit.inspect(big, (torch.zeros(1, 16, dtype=torch.long, device="meta"),))
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "weights_bytes": weights,
                  "peak_over_weights": (peak() - start) / weights, "elasticize_added_over_weights": (peak() - built) / weights,
                  "elasticize_s": seconds, "space": len(family.space),
                  "meta_7b_params": report.params_max, "meta_7b_inspect_s": time.perf_counter() - t1}))
"""


def memory() -> dict:
    done = subprocess.run([sys.executable, "-c", MEMORY], env=_env(2), capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(result: dict, command: str) -> str:
    from onefit.cost.latency import environment

    env = environment()
    lines = [f"# Scaling out\n\n`{command}`; {env['cpu']}, {env['cores']} cores. Everything below shares these "
             f"{env['cores']} cores: 2 processes or 4 workers compete for them, so the figures measure the "
             "machinery's overhead and correctness, not the speed-up a cluster gives.\n",
             "## Family training (SortedNet, digits ResNet family, global batch 64, one epoch)\n",
             "| processes | threads each | samples/s (median) | min | max | repeats |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {t['processes']} | {t['threads']} | {t['samples_per_s']:.0f} | {t['min']:.0f} | {t['max']:.0f} | "
              f"{t['repeats']} |" for t in result["training"]]
    base = {(t["processes"], t["threads"]): t["samples_per_s"] for t in result["training"]}
    lines += ["", f"2 processes x 1 thread against 1 process x 1 thread: {base[(2, 1)] / base[(1, 1)]:.2f}x; against "
              f"1 process x 2 threads (the same 2 cores): {base[(2, 1)] / base[(1, 2)]:.2f}x.\n",
              "## Search workers on one PostgreSQL study\n",
              "| workers | budget | evaluated | distinct | duplicates | wall s | evals/min (wall) | evals/min (steady) "
              "| median s per evaluation |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['workers']} | {s['budget']} | {s['evaluated']} | {s['distinct']} | {s['duplicates']} | "
              f"{s['wall_s']} | {s['evals_per_min_wall']} | {s['evals_per_min_steady']} | {s['median_eval_s']} |"
              for s in result["search"]]
    db = result["database"]
    one = next(s for s in result["search"] if s["workers"] == 1)
    lines += ["", "Wall time includes each worker's start (Python, torch, loading the family: a few seconds). "
              "The steady rate counts evaluations between the first and the last recorded trial.\n",
              "## The database's share, and a projection\n",
              f"PostgreSQL takes {db['db_s_per_eval'] * 1000:.1f} ms per evaluation (claim, record, finish, read the "
              f"new trials; {db['n']} measured on this machine, server and client sharing its cores). With one "
              f"evaluation taking {one['median_eval_s']:.3f} s here, a worker spends "
              f"{db['db_s_per_eval'] / (db['db_s_per_eval'] + one['median_eval_s']):.1%} of its time on the database.",
              ""]
    for n in (8, 64):
        rate = n * 60 / (one["median_eval_s"] + db["db_s_per_eval"])
        lines.append(f"- {n} workers, each on its own cores: about {rate:,.0f} evaluations/min (n / (evaluation + "
                     f"database time)), if the server keeps its per-evaluation time; reading the new trials grows "
                     f"with the study's size, so at thousands of trials that term, not the claims, sets the limit.")
    m = result["memory"]
    if not m:
        return "\n".join(lines) + "\n"
    lines += ["", "## Models too large to copy\n",
              f"- A TinyLlama-1.1B-shaped decoder ({m['params'] / 1e9:.2f} B parameters, {m['weights_bytes'] / 2**30:.1f} "
              f"GiB of float32 weights, random): `elasticize(..., copy_model=False)` in {m['elasticize_s']:.1f} s; the "
              f"process's peak memory over its start is {m['peak_over_weights']:.2f}x the weights (target: under 2x); "
              f"elasticizing added {m['elasticize_added_over_weights']:.2f}x. {m['space']} dimensions (query heads "
              "per key/value group and FFN width in every block, and depth).",
              f"- `onefit inspect` of a Llama-2-7B config ({m['meta_7b_params'] / 1e9:.2f} B parameters) on the meta "
              f"device: {m['meta_7b_inspect_s']:.1f} s, no weights allocated."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat, budget 12, no 1.1B model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import postgres

    result: dict = {"training": training(1 if args.quick else 3)}
    budget = 12 if args.quick else 40
    with tempfile.TemporaryDirectory() as tmp, postgres.server() as url:
        folder = Path(tmp) / "digits"
        _run_folder(folder)
        result["search"] = []
        for workers in (1, 2, 4):
            result["search"].append(search_workers(url, folder, workers, budget))
            print(result["search"][-1], flush=True)
        result["database"] = database_share(url, 30 if args.quick else 100)
    result["memory"] = memory() if not args.quick else {}
    command = "python bench/scale.py" + (" --quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scale_quick" if args.quick else "scale"
    (args.out / f"{stem}.json").write_text(json.dumps({"command": command, **result}, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result, command))
    return result


if __name__ == "__main__":
    main()
