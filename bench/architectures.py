"""The transformer architectures onefit reads, each checked from transformers' own config class
with random weights (and a plain PyTorch language model on nn.TransformerEncoder): which layout
of ``onefit.graph.transformers.LAYOUTS`` it takes (or the Mamba reader), what shrinks with the
hidden size and whole key/value groups asked for too, why the hidden size stays whole where it
does, whether the largest arch is the original, whether extraction equals the elastic forward,
and whether a uniform sub-model reloads with ``from_pretrained``. Writes
bench/results/architectures.{json,md}; the README's table of supported architectures is this one.

    python bench/architectures.py
"""

from __future__ import annotations

import json
import random
import tempfile
import warnings
from pathlib import Path

import torch

import onefit
from onefit.graph.mamba import find_mamba
from onefit.graph.transformers import LAYOUTS, _layout, find_encoders

ASKED = dict(hidden=(0.5, 1.0), kv_heads=(0.5, 1.0))  # beyond the defaults: the hidden size, whole key/value groups

RESULTS = Path(__file__).parent / "results"


def configs():
    import transformers as t

    small = dict(vocab_size=100, num_hidden_layers=3)
    decoder = dict(small, hidden_size=48, intermediate_size=64, num_attention_heads=6, use_cache=False)
    return {
        "BERT": (t.BertConfig(**small, hidden_size=32, intermediate_size=64, num_attention_heads=4), t.BertModel),
        "RoBERTa": (t.RobertaConfig(**small, hidden_size=32, intermediate_size=64, num_attention_heads=4),
                    t.RobertaModel),
        "DistilBERT": (t.DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=3, n_heads=4),
                       t.DistilBertModel),
        "ViT": (t.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=64), t.ViTModel),
        "GPT-2": (t.GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=16), t.GPT2LMHeadModel),
        "Llama (multi-head)": (t.LlamaConfig(**decoder, num_key_value_heads=6, head_dim=8), t.LlamaForCausalLM),
        "Llama (grouped-query)": (t.LlamaConfig(**decoder, num_key_value_heads=2, head_dim=8), t.LlamaForCausalLM),
        "Mistral": (t.MistralConfig(**decoder, num_key_value_heads=2, head_dim=8), t.MistralForCausalLM),
        "Qwen2": (t.Qwen2Config(**decoder, num_key_value_heads=2), t.Qwen2ForCausalLM),
        "Qwen3": (t.Qwen3Config(**decoder, num_key_value_heads=2, head_dim=8), t.Qwen3ForCausalLM),
        "Gemma": (t.GemmaConfig(**decoder, num_key_value_heads=2, head_dim=8), t.GemmaForCausalLM),
        "Phi-3": (t.Phi3Config(**decoder, num_key_value_heads=2, pad_token_id=0), t.Phi3ForCausalLM),
        "Mamba": (t.MambaConfig(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                                conv_kernel=4, use_cache=False), t.MambaForCausalLM),
        "nn.TransformerEncoder LM (causal + padding masks, tied output)": (None, CausalLM),
    }


class CausalLM(torch.nn.Module):
    """Plain PyTorch: embedding, nn.TransformerEncoder under a causal and a padding mask, tied output."""

    def __init__(self, config=None):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 32)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 3)
        self.out = torch.nn.Linear(32, 100, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids, padding):
        causal = torch.nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.out(self.enc(self.emb(ids), mask=causal, is_causal=True, src_key_padding_mask=padding))


def output(result):
    if isinstance(result, torch.Tensor):
        return result
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def layout_of(model) -> str:
    if find_mamba(model):
        return "mamba"
    encoders = find_encoders(model)
    if not encoders:
        return "traced (torch.fx)"
    return next(k for k, v in LAYOUTS.items() if v == _layout(model.get_submodule(encoders[0])[0]))


def hidden_note(family) -> str:
    if any(d.kind == "hidden" for d in family.space):
        return "shrinks"
    frozen = [g.frozen for g in family.plan.groups.values() if g.frozen and "model width" in g.frozen]
    if frozen:
        return frozen[0].split(": ", 1)[-1]
    note = next((n for n in family.plan.notes if "hidden size" in n), "kept whole")
    return note.split("kept whole: ")[-1] if "kept whole: " in note else note.split(": ", 1)[-1]


def check(name: str, config, cls) -> dict:
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = (torch.randn(2, 1, 8, 8),) if name == "ViT" else (torch.randint(3, 100, (2, 7)),)
    if cls is CausalLM:
        inputs = (*inputs, torch.zeros(2, 7).masked_fill(torch.arange(7) >= 5, float("-inf")))
    family = onefit.elasticize(model, inputs, onefit.ElasticConfig(**ASKED))
    layout = layout_of(model)
    with torch.no_grad():
        largest = float((output(family(*inputs)) - output(model(*inputs))).abs().max())
        gaps = []
        for arch in (family.space.min(), family.space.sample(random.Random(0))):
            with family.activate(arch), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-block sizes: the config note, not the point here
                gaps.append(float((output(family.extract(arch).eval()(*inputs)) - output(family(*inputs))).abs().max()))
    reload = None
    if hasattr(model, "generate"):  # a uniform sub-model through save_pretrained / from_pretrained
        uniform = onefit.elasticize(model, inputs, onefit.ElasticConfig(uniform=True, **ASKED))
        smallest = uniform.space.min()
        reload = reloaded(uniform, smallest, inputs)
        hidden = {d.name: d.choices[-1] for d in uniform.space if d.kind == "hidden"}
        if isinstance(reload, str) and hidden:  # a config that cannot write a narrower hidden size: the rest
            again = reloaded(uniform, {**smallest, **hidden}, inputs)
            reload = f"{reload}; with the hidden size whole: " + (
                again if isinstance(again, str) else f"{again['gap']:.1e} ({_sizes(again)})")
    kinds = sorted({d.kind for d in family.space})
    return {"architecture": name, "class": cls.__name__, "layout": layout, "kinds": kinds,
            "hidden_size": hidden_note(family), "sub_models": family.space.size, "largest_vs_original": largest,
            "extract_vs_elastic": max(gaps), "onnx_cosine": exported(family, inputs),
            "uniform_reload_vs_elastic": reload}


class Output(torch.nn.Module):
    """Export wrapper: tensors in, the logits or last hidden state out (no caches, no dict outputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, extra=None):  # named inputs: the dynamo exporter matches them to their shapes
        kwargs = {"use_cache": False} if hasattr(self.model, "generate") else {}
        return output(self.model(*(x,) if extra is None else (x, extra), **kwargs))


def exported(family, inputs) -> float | str:
    """The smallest sub-model exported to ONNX (dynamo): the cosine of its file's output to PyTorch's
    on inputs other than the example, or why it failed."""
    from onefit.export import export

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        try:
            return export(Output(family.extract(family.space.min()).eval()), Path(folder) / "sub.onnx", inputs,
                          exporter="dynamo").cosine
        except Exception as err:  # a failure to report, not to hide
            return f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:100]}"


def reloaded(family, arch, inputs):
    """The gap between ``arch`` reloaded by transformers and the family, with the reloaded config's
    sizes; or why it was not reloaded."""
    import transformers

    with warnings.catch_warnings(record=True) as said, tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("always")
        family.extract(arch).save_pretrained(folder)
        if any("cannot describe" in str(w.message) for w in said):
            return "its config cannot describe it (said so)"
        try:
            back = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
            with torch.no_grad(), family.activate(arch):
                gap = float((back(*inputs).logits - family(*inputs, use_cache=False).logits).abs().max())
        except RuntimeError as err:  # a failure to report, not to hide
            return f"FAILED: {str(err).splitlines()[0][:120]}"
    return {"gap": gap, "config": {k: getattr(back.config, k, None) for k in (
        "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_hidden_layers")}}


def _cosine(value) -> str:
    return value if isinstance(value, str) else f"{value:.6f}"


def _sizes(reload: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in reload["config"].items() if v is not None)


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"# Transformer architectures\n\n`{command}`; transformers' own config classes, tiny sizes, random "
             f"weights, with `ElasticConfig({', '.join(f'{k}={v}' for k, v in ASKED.items())})` (the hidden size and "
             "whole key/value groups asked for, where they can shrink). Max absolute differences; the reload column: "
             "the smallest uniform sub-model saved with save_pretrained and loaded with from_pretrained (its config's "
             "sizes; blank: not a generating model); the ONNX column: the smallest sub-model exported with the "
             "dynamo exporter, parity checked on inputs other than the example.\n",
             "| architecture | class | layout | shrinks | hidden size | sub-models | largest arch vs original | "
             "extract vs elastic | smallest in ONNX: cosine | uniform sub-model reloaded vs elastic |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        value = r["uniform_reload_vs_elastic"]
        reload = "" if value is None else value if isinstance(value, str) else f"{value['gap']:.1e} ({_sizes(value)})"
        lines.append(f"| {r['architecture']} | {r['class']} | {r['layout']} | {', '.join(r['kinds'])} | "
                     f"{r['hidden_size']} | {r['sub_models']:,} | {r['largest_vs_original']:.1e} | "
                     f"{r['extract_vs_elastic']:.1e} | {_cosine(r['onnx_cosine'])} | {reload} |")
    return "\n".join(lines) + "\n"


def main() -> list[dict]:
    rows = [check(name, config, cls) for name, (config, cls) in configs().items()]
    command = "python bench/architectures.py"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "architectures.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (RESULTS / "architectures.md").write_text(markdown(rows, command))
    print(markdown(rows, command))
    return rows


if __name__ == "__main__":
    main()
