"""The transformer architectures onefit reads, each checked from transformers' own config class
with random weights: which layout of ``onefit.graph.transformers.LAYOUTS`` it takes, what shrinks,
whether the largest arch is the original, whether extraction equals the elastic forward, and
whether a uniform sub-model reloads with ``from_pretrained``. Writes
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
from onefit.graph.transformers import LAYOUTS, _layout, find_encoders

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
        "Gemma": (t.GemmaConfig(**decoder, num_key_value_heads=2, head_dim=8), t.GemmaForCausalLM),
        "Phi-3": (t.Phi3Config(**decoder, num_key_value_heads=2, pad_token_id=0), t.Phi3ForCausalLM),
    }


def output(result):
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


def check(name: str, config, cls) -> dict:
    torch.manual_seed(0)
    model = cls(config).eval()
    inputs = (torch.randn(2, 1, 8, 8),) if name == "ViT" else (torch.randint(3, 100, (2, 7)),)
    family = onefit.elasticize(model, inputs)
    layout = next(k for k, v in LAYOUTS.items() if v == _layout(model.get_submodule(find_encoders(model)[0])[0]))
    with torch.no_grad():
        largest = float((output(family(*inputs)) - output(model(*inputs))).abs().max())
        gaps = []
        for arch in (family.space.min(), family.space.sample(random.Random(0))):
            with family.activate(arch), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-block sizes: the config note, not the point here
                gaps.append(float((output(family.extract(arch).eval()(*inputs)) - output(family(*inputs))).abs().max()))
    reload = None
    if hasattr(model, "generate"):  # a uniform sub-model through save_pretrained / from_pretrained
        import transformers

        uniform = onefit.elasticize(model, inputs, onefit.ElasticConfig(uniform=True))
        arch = uniform.space.min()
        with warnings.catch_warnings(record=True) as said, tempfile.TemporaryDirectory() as folder:
            warnings.simplefilter("always")
            uniform.extract(arch).save_pretrained(folder)
            if any("cannot describe" in str(w.message) for w in said):
                reload = "its config cannot describe it (said so)"
            else:
                try:
                    back = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
                    with torch.no_grad(), uniform.activate(arch):
                        reload = float((back(*inputs).logits - uniform(*inputs, use_cache=False).logits).abs().max())
                except RuntimeError as err:  # a failure to report, not to hide
                    reload = f"FAILED: {str(err).splitlines()[0][:120]}"
    kinds = sorted({d.kind for d in family.space})
    return {"architecture": name, "class": cls.__name__, "layout": layout, "kinds": kinds,
            "sub_models": family.space.size, "largest_vs_original": largest, "extract_vs_elastic": max(gaps),
            "uniform_reload_vs_elastic": reload}


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"# Transformer architectures\n\n`{command}`; transformers' own config classes, tiny sizes, random "
             "weights. Max absolute differences; the reload column: the smallest uniform sub-model saved with "
             "save_pretrained and loaded with from_pretrained (blank: not a generating model).\n",
             "| architecture | class | layout | shrinks | sub-models | largest arch vs original | extract vs elastic | "
             "uniform sub-model reloaded vs elastic |", "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        value = r["uniform_reload_vs_elastic"]
        reload = "" if value is None else value if isinstance(value, str) else f"{value:.1e}"
        lines.append(f"| {r['architecture']} | {r['class']} | {r['layout']} | {', '.join(r['kinds'])} | "
                     f"{r['sub_models']:,} | {r['largest_vs_original']:.1e} | {r['extract_vs_elastic']:.1e} | {reload} |")
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
