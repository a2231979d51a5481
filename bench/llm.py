"""SmolLM2-135M as one family against the Minitron way, on the Python language reference.

At about 75 %, 60 % and 50 % of the original's non-embedding parameters, held-out perplexity of:
(a) the sub-model of one family, trained once with KL distillation from the original under the
sandwich rule (the largest, the smallest and one random sub-model each step); (b) the Minitron
way: the original pruned to that one size with the same importance (activations, depth by block
importance), then distilled from the original with the same token budget the family had, one
run per size; (c) pruned, no training; (d) the original. The three archs are the same for (a),
(b) and (c): per size, of the uniform archs within 2.5 % of the target, the one whose pruned
model has the lowest perplexity on training blocks before any training. Then prefill latency
(batch 1, 128 tokens) and decode tokens per second, on torch eager (with the cache) and on ONNX
Runtime (the forward without a cache, re-run per token), of each extracted (a) sub-model and the
original. Writes bench/results/llm.{json,md}.

``--minilm``: all-MiniLM-L6-v2 as a family trained with embedding distillation (cosine to the
original's mean-pooled sentence embeddings) on sentences of the same text: held-out cosine of
sub-models at about 50 % and 75 % of its non-embedding parameters, against the same sub-models
cut without training. Writes bench/results/llm_minilm.{json,md}.

    python bench/llm.py                # about an hour on 2 cores
    python bench/llm.py --minilm       # minutes
    python bench/llm.py --tiny         # a smoke run on a random tiny Llama (seconds)
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import onefit
from onefit import distill
from onefit.tasks import DistillationTask, LanguageModelingTask, evaluate
from onefit.train.sampler import LadderSampler, SandwichSampler

RESULTS = Path(__file__).parent / "results"
TARGETS = (0.75, 0.60, 0.50)  # shares of the original's non-embedding parameters
TOLERANCE = 0.025
SPACE = dict(uniform=True, hidden=(0.5, 0.625, 0.75, 0.875, 1.0), width=(0.5, 0.625, 0.75, 0.875, 1.0),
             depth=tuple(range(18, 31)))


def load(tiny: bool):
    """(model, tokenizer or None, train blocks, test blocks)."""
    if tiny:
        import transformers

        config = transformers.LlamaConfig(vocab_size=256, hidden_size=96, intermediate_size=128, num_hidden_layers=4,
                                          num_attention_heads=6, num_key_value_heads=3, head_dim=16,
                                          tie_word_embeddings=True, use_cache=False)
        torch.manual_seed(0)
        blocks = torch.randint(0, 256, (48, 32))
        return transformers.LlamaForCausalLM(config).eval(), blocks[:40], blocks[40:]
    from onefit.data.text import reference_topics, token_blocks
    from onefit.zoo.smollm2 import VOCABULARY, smollm2, smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    train_topics, test_topics = reference_topics()
    train = token_blocks(train_topics, tokenizer, 128, VOCABULARY)
    test = token_blocks(test_topics, tokenizer, 128, VOCABULARY)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    return smollm2(), train, test[:32]


def batches(blocks: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [blocks[i : i + size] for i in range(0, len(blocks) - size + 1, size)]


def perplexity(module, blocks: torch.Tensor, batch: int = 4) -> float:
    return evaluate(module, batches(blocks, batch), LanguageModelingTask())


def non_embedding(family, arch) -> int:
    """Parameters of ``arch`` without its (tied) embedding matrix."""
    emb = family.module.model.embed_tokens
    hidden = next((v for k, v in arch.items() if k.startswith("hidden:")), emb.embedding_dim)
    return onefit.count_params(family, arch) - emb.num_embeddings * hidden


def choose_archs(family, calibration: torch.Tensor) -> dict[float, dict]:
    """Per target share, the uniform arch within TOLERANCE whose pruned model scores best."""
    full = non_embedding(family, family.space.max())
    chosen = {}
    everything = [dict(zip(family.space.names, values)) for values in itertools.product(*(d.choices for d in family.space))]
    for share in TARGETS:
        near = [a for a in everything if abs(non_embedding(family, a) / full - share) <= TOLERANCE]
        near = sorted(near, key=lambda a: abs(non_embedding(family, a) / full - share))[:16]
        scores = []
        for arch in near:
            with torch.no_grad(), family.activate(arch):
                scores.append((perplexity(family, calibration), arch))
        ppl, arch = min(scores, key=lambda s: s[0])
        chosen[share] = {"arch": arch, "candidates": len(near), "calibration_ppl": ppl,
                         "non_embedding": non_embedding(family, arch), "params": onefit.count_params(family, arch)}
    return chosen


def distil_plain(student, teacher, data: list[torch.Tensor], lr: float, temperature: float) -> float:
    """(b): one pruned model distilled from the original over ``data``; seconds taken."""
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    start = time.perf_counter()
    for ids in data:
        with torch.no_grad():
            target = teacher(ids).logits
        loss = distill.kl(student(ids).logits, target, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    return time.perf_counter() - start


class NoCache(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids, use_cache=False).logits


def latency(model, prompt: torch.Tensor, new_tokens: int, repeats: int, onnx: bool = True) -> dict:
    """Prefill ms (batch 1) and decode tokens/s, eager (with the cache) and ONNX Runtime (no cache)."""
    from onefit.export import export
    from onefit.export.onnx import onnx_session, run_onnx

    model.eval()
    out = {}
    with torch.no_grad():
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(prompt, use_cache=False)
            times.append(time.perf_counter() - t)
        out["eager_prefill_ms"] = 1000 * statistics.median(times)
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
        t = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True)
        out["eager_decode_tok_s"] = new_tokens / (time.perf_counter() - t - out["eager_prefill_ms"] / 1000)
    if not onnx:
        return out
    with tempfile.TemporaryDirectory() as folder:
        # exported at batch 2 (a batch of 1 would be fixed into the graph), run at batch 1; the
        # sequence length is fixed in the graph, so decoding slides a window of the prompt's length
        report = export(NoCache(model), Path(folder) / "m.onnx", (prompt.repeat(2, 1),), exporter="dynamo")
        session = onnx_session(Path(folder) / "m.onnx", threads=torch.get_num_threads())
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run_onnx(session, (prompt,))
            times.append(time.perf_counter() - t)
        out["ort_prefill_ms"] = 1000 * statistics.median(times)
        ids, t = prompt, time.perf_counter()
        for _ in range(new_tokens):
            logits = run_onnx(session, (ids,))
            ids = torch.cat([ids[:, 1:], torch.tensor(logits[:, -1].argmax(-1))[:, None]], 1)
        out["ort_decode_tok_s"] = new_tokens / (time.perf_counter() - t)
        out["onnx_cosine"] = report.cosine
    return out


def cosine(module, data) -> float:
    """Mean cosine to the original's sentence embeddings over ``data`` (``(ids, mask, target)`` triples)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, target in data:
            total += torch.nn.functional.cosine_similarity(module(ids, mask), target, dim=-1).sum().item()
            n += len(ids)
    return total / n


def minilm(args) -> dict:
    """The MiniLM half: a family against sub-models cut without training (see the module)."""
    import random

    from torch.utils.data import DataLoader, TensorDataset

    from onefit.data.text import reference_sentences
    from onefit.zoo.minilm import minilm as load_minilm, tokenize

    started = time.perf_counter()
    model, tokenizer = load_minilm()
    teacher = copy.deepcopy(model).eval()
    train_text, test_text = reference_sentences()
    random.Random(0).shuffle(train_text)
    train_text = train_text[: args.sentences]

    def triples(texts):
        ids, mask = tokenize(tokenizer, texts, 32)
        with torch.no_grad():
            target = torch.cat([teacher(i, m) for i, m in zip(ids.split(64), mask.split(64))])
        return list(DataLoader(TensorDataset(ids, mask, target), batch_size=16))

    train, test = triples(train_text), triples(test_text[: args.test_sentences])
    family = onefit.elasticize(model, (train[0][0][:2], train[0][1][:2]), onefit.ElasticConfig(
        uniform=True, width=(0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0), heads=(0.25, 0.5, 0.75, 1.0)))
    task = DistillationTask(teacher, kind="cosine", n_inputs=2)
    onefit.sort_(family, onefit.ActivationImportance(train[:4], task))
    emb = family.module.encoder.embeddings
    embedding = sum(p.numel() for p in emb.parameters())
    full = onefit.count_params(family, family.space.max()) - embedding
    everything = [dict(zip(family.space.names, v)) for v in itertools.product(*(d.choices for d in family.space))]
    chosen = {}
    for share in (0.75, 0.5):
        near = sorted(everything, key=lambda a: abs((onefit.count_params(family, a) - embedding) / full - share))
        near = near[: args.candidates]
        scores = []
        for arch in near:
            with family.activate(arch):
                scores.append((cosine(family, train[-4:]), arch))
        arch = max(scores, key=lambda s: s[0])[1]
        with family.activate(arch):
            cut = cosine(family, test)
        chosen[share] = {"arch": arch, "non_embedding": onefit.count_params(family, arch) - embedding,
                         "params": onefit.count_params(family, arch), "cut": cut}
    t = time.perf_counter()
    sampler = SandwichSampler(n_random=2) if args.sampler == "sandwich" else \
        LadderSampler(tuple(c["arch"] for c in chosen.values()))
    recipe = onefit.SortedNetRecipe(onefit.SortedNetConfig(distill="none"), sampler=sampler)
    onefit.train(family, [(i, m) for i, m, _ in train], recipe, epochs=args.minilm_epochs, task=task,
                 optimizer=torch.optim.Adam(family.parameters(), lr=args.minilm_lr), progress=True)
    family_seconds = time.perf_counter() - t
    family.eval()
    for share, c in chosen.items():
        with family.activate(c["arch"]):
            c["family"] = cosine(family, test)
        c["extracted"] = cosine(family.extract(c["arch"]).eval(), test)
    return {"command": "python bench/llm.py " + " ".join(args.argv), "machine": f"{platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}", "train_sentences": len(train_text),
            "test_sentences": sum(len(b[0]) for b in test), "epochs": args.minilm_epochs, "lr": args.minilm_lr,
            "sampler": args.sampler,
            "original_non_embedding": full, "original_params": full + embedding, "largest_cosine": cosine(family, test),
            "chosen": {str(k): v for k, v in chosen.items()},
            "seconds": {"family": family_seconds, "total": time.perf_counter() - started}}


MINILM_FAMILY = {"sandwich": "each step the largest, the smallest and two random sub-models",
                 "ladder": "each step the largest and the two archs of the table"}


def minilm_markdown(r: dict) -> str:
    lines = ["# all-MiniLM-L6-v2: a family against sub-models cut without training\n",
             f"`{r['command']}`; {r['machine']}. Cosine to the original's sentence embeddings (mean-pooled, "
             f"normalised) on {r['test_sentences']} held-out sentences of the Python language reference (test "
             f"topics); the family trained {r['epochs']} epochs on {r['train_sentences']} training sentences with "
             f"cosine distillation from the original ({MINILM_FAMILY[r.get('sampler', 'sandwich')]}), Adam at "
             f"{r['lr']}. The hidden size stays whole "
             f"(BERT-style encoders keep it), so the shares are of the non-embedding parameters "
             f"({r['original_non_embedding']:,} of {r['original_params']:,}). The largest sub-model after training: "
             f"{r['largest_cosine']:.4f}.\n",
             "| share of non-embedding params | arch | params | cut, no training | family (extracted) | target |",
             "|---|---|---:|---:|---:|---|"]
    for share, c in r["chosen"].items():
        arch = ", ".join(f"{k.split(':')[0]} {v}" for k, v in c["arch"].items())
        target = ("cosine >= 0.9: " + ("met" if c["extracted"] >= 0.9 else "missed")) if float(share) == 0.5 else ""
        lines.append(f"| {c['non_embedding'] / r['original_non_embedding']:.1%} (target {float(share):.0%}) | {arch} | "
                     f"{c['params']:,} | {c['cut']:.4f} | {c['extracted']:.4f} | {target} |")
    lines.append(f"\nSeconds: family training {r['seconds']['family']:.0f}, total {r['seconds']['total']:.0f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="training batches for the family, and for each (b) run")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a random tiny Llama and random tokens: a smoke run")
    parser.add_argument("--no-onnx", action="store_true", help="eager latency only (a smoke run)")
    parser.add_argument("--sampler", choices=("sandwich", "ladder"), default="sandwich",
                        help="the family's sub-models per step: largest, smallest, one random (sandwich); or the "
                             "largest and the three chosen archs (ladder, as MatFormer/Flextron train a few sizes)")
    parser.add_argument("--minilm", action="store_true", help="the MiniLM half instead")
    parser.add_argument("--sentences", type=int, default=2048, help="MiniLM: training sentences")
    parser.add_argument("--test-sentences", type=int, default=512, help="MiniLM: held-out sentences")
    parser.add_argument("--minilm-epochs", type=int, default=3)
    parser.add_argument("--minilm-lr", type=float, default=5e-5)
    parser.add_argument("--candidates", type=int, default=12, help="MiniLM: archs scored per size before training")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.minilm:
        result = minilm(args)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "llm_minilm" if args.sampler == "sandwich" else f"llm_minilm_{args.sampler}"
        (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (args.out / f"{stem}.md").write_text(minilm_markdown(result))
        print(minilm_markdown(result))
        return result
    started = time.perf_counter()
    seconds = {}
    model, train_blocks, test_blocks = load(args.tiny)
    space = dict(SPACE, depth=tuple(range(2, 5))) if args.tiny else SPACE
    teacher = copy.deepcopy(model).eval()
    data = batches(train_blocks, args.batch)
    steps = min(args.steps, len(data))
    data = data[:steps]
    calibration = train_blocks[-8:]
    tokens = steps * args.batch * train_blocks.shape[1]

    t = time.perf_counter()
    family = onefit.elasticize(model, (train_blocks[:1],), onefit.ElasticConfig(**space), copy_model=False)
    task = LanguageModelingTask()
    onefit.order_depth_(family, batches(calibration, 4), task)
    onefit.sort_(family, onefit.ActivationImportance(batches(calibration, 4), task))
    chosen = choose_archs(family, calibration)
    pruned = {share: family.extract(c["arch"]).eval() for share, c in chosen.items()}  # before any training
    seconds["prune_and_choose"] = time.perf_counter() - t
    print(f"chose {[(s, c['arch']) for s, c in chosen.items()]} in {seconds['prune_and_choose']:.0f}s", flush=True)

    rows = {"original": {"params": sum(p.numel() for p in teacher.parameters()),
                         "non_embedding": non_embedding(family, family.space.max()),
                         "ppl": perplexity(teacher, test_blocks)}}
    for share in TARGETS:
        rows[f"c{share}"] = {"ppl": perplexity(pruned[share], test_blocks)}

    t = time.perf_counter()  # (a): one family, trained once
    sampler = SandwichSampler(n_random=1) if args.sampler == "sandwich" else \
        LadderSampler(tuple(chosen[share]["arch"] for share in TARGETS))
    recipe = onefit.SortedNetRecipe(onefit.SortedNetConfig(distill="none"), sampler=sampler)
    onefit.train(family, data, recipe, epochs=1, task=DistillationTask(teacher, kind="kl", temperature=args.temperature),
                 optimizer=torch.optim.Adam(family.parameters(), lr=args.lr), progress=True)
    seconds["family"] = time.perf_counter() - t
    family.eval()
    extracted = {share: family.extract(chosen[share]["arch"]).eval() for share in TARGETS}
    for share in TARGETS:
        rows[f"a{share}"] = {"ppl": perplexity(extracted[share], test_blocks)}
    print(f"family trained in {seconds['family']:.0f}s", flush=True)

    for share in TARGETS:  # (b): the Minitron way, one run per size
        seconds[f"minitron_{share}"] = distil_plain(pruned[share], teacher, data, args.lr, args.temperature)
        rows[f"b{share}"] = {"ppl": perplexity(pruned[share], test_blocks)}
        print(f"minitron {share}: {rows[f'b{share}']['ppl']:.2f} in {seconds[f'minitron_{share}']:.0f}s", flush=True)

    t = time.perf_counter()
    prompt = test_blocks[:1, : min(128, test_blocks.shape[1])]
    new = 8 if args.tiny else 16
    timing = {"original": latency(teacher, prompt, new, args.repeats, not args.no_onnx)}
    for share in TARGETS:
        timing[f"a{share}"] = latency(extracted[share], prompt, new, args.repeats, not args.no_onnx)
    seconds["latency"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    result = {"command": "python bench/llm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
              "tiny": args.tiny, "sampler": args.sampler, "tokens_per_run": tokens, "steps": steps, "batch": args.batch,
              "block": int(train_blocks.shape[1]), "lr": args.lr, "temperature": args.temperature,
              "test_tokens": int(test_blocks.numel()), "space": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in space.items()},
              "chosen": {str(s): c for s, c in chosen.items()}, "rows": rows, "latency": timing, "seconds": seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "llm_tiny" if args.tiny else "llm" if args.sampler == "sandwich" else f"llm_{args.sampler}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return result


FAMILY = {"sandwich": "each step the largest, the smallest and one random sub-model",
          "ladder": "each step the largest and the three archs of the table"}


def markdown(r: dict) -> str:
    rows, original = r["rows"], r["rows"]["original"]
    lines = [f"# SmolLM2-135M: one family against the Minitron way{' (tiny smoke run)' if r['tiny'] else ''}\n",
             f"`{r['command']}`; {r['machine']}. Held-out perplexity on {r['test_tokens']:,} tokens of test topics of "
             f"the Python language reference ({r['block']}-token blocks). Token budget: {r['tokens_per_run']:,} "
             f"tokens ({r['steps']} batches of {r['batch']}) for the family ({FAMILY[r.get('sampler', 'sandwich')]}), "
             f"and the same for each Minitron run "
             f"(so {3 * r['tokens_per_run']:,} for the three). KL distillation from the original at temperature "
             f"{r['temperature']}, Adam at {r['lr']}.\n",
             "| share of non-embedding params | arch | params | (a) family | (b) Minitron, one run per size | "
             "(c) pruned, no training | (a) / (b) | target (a) within 10 % of (b) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for share, c in r["chosen"].items():
        a, b, cc = (rows[f"{k}{share}"]["ppl"] for k in "abc")
        arch = ", ".join(f"{k.split(':')[0]} {v}" for k, v in c["arch"].items())
        lines.append(f"| {c['non_embedding'] / original['non_embedding']:.1%} (target {float(share):.0%}) | {arch} | "
                     f"{c['params']:,} | {a:.2f} | {b:.2f} | {cc:.1f} | {a / b:.3f} | {'met' if a <= 1.1 * b else 'missed'} |")
    lines.append(f"| 100 % (the original) | | {original['params']:,} | {original['ppl']:.2f} | | | | |")
    lines += ["", "Latency (batch 1, the prompt a 128-token block, medians): prefill and decode; eager decodes with "
              "the cache, ONNX Runtime re-runs the forward without a cache for each new token over a window of the "
              "last 128 tokens (its graph has a fixed sequence length).", "",
              "| model | eager prefill ms | eager decode tok/s | ORT prefill ms | ORT decode tok/s | ONNX cosine |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, t in r["latency"].items():
        label = "original" if name == "original" else f"(a) at {float(name[1:]):.0%}"
        ort = (f"{t['ort_prefill_ms']:.1f} | {t['ort_decode_tok_s']:.1f} | {t['onnx_cosine']:.6f}"
               if "ort_prefill_ms" in t else "not run | | ")
        lines.append(f"| {label} | {t['eager_prefill_ms']:.1f} | {t['eager_decode_tok_s']:.1f} | {ort} |")
    s = r["seconds"]
    lines += ["", f"Seconds: pruning and choosing archs {s['prune_and_choose']:.0f}, family {s['family']:.0f}, Minitron "
              f"runs {sum(v for k, v in s.items() if k.startswith('minitron')):.0f}, latency {s['latency']:.0f}, "
              f"total {s['total']:.0f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
