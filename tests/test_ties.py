"""Tied weights (an output layer sharing its input embedding): they shrink together, stay one
tensor in a sub-model, are sorted, counted and saved once."""

import random
import warnings

import pytest
import torch
from torch import nn

import onefit


class TiedLM(nn.Module):
    """Embedding -> MLP back to the embedding width -> an output layer tied to the embedding."""

    def __init__(self, vocab=20, width=16, hidden=24):
        super().__init__()
        self.emb, self.up, self.down = nn.Embedding(vocab, width), nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):  # (B, T) -> (B, T, vocab)
        return self.out(self.down(torch.relu(self.up(self.emb(ids)))))


def test_a_tied_output_layer_shrinks_with_its_embedding_and_stays_one_tensor(tmp_path):
    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 20, (3, 5))
    family = onefit.elasticize(model, (ids[:1],), onefit.ElasticConfig(width=(0.5, 1.0), rank=(0.5,), bits=(8,)))
    plan = family.plan
    assert plan.tied == [("emb.weight", "out.weight")]
    assert plan.layers["emb"].out_group == plan.layers["out"].in_group == plan.layers["down"].out_group
    assert "width:emb" in family.space.names
    assert "out" not in family.factorized and "its weight is tied to emb.weight" in family.rank_notes["out"]
    assert "bits:out" not in family.space.names
    x = torch.randint(0, 20, (4, 7))  # inputs other than the example
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(onefit.sort_(family)(x), expected, atol=1e-5)  # the shared tensor is permuted once
        for arch in (family.space.min(), family.space.sample(random.Random(0))):
            sub = family.extract(arch)
            assert sub.out.weight is sub.emb.weight and sub.emb.weight.shape[1] == arch["width:emb"]
            with family.activate(arch):
                assert torch.allclose(sub(x), family(x), atol=1e-6)
            assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
    family.save(tmp_path)
    again = onefit.saved.restore_(onefit.elasticize(TiedLM(), (ids[:1],), family.config), tmp_path)
    assert again.module.out.weight is again.module.emb.weight
    with torch.no_grad():
        assert torch.equal(again(x), family(x))


def test_a_tied_weight_whose_other_holder_reads_fixed_channels_stays_whole_with_the_reason():
    class Projected(nn.Module):  # the output layer reads channels an op fixed
        def __init__(self):
            super().__init__()
            self.emb, self.mix = nn.Embedding(12, 8), nn.Linear(8, 8)
            self.out = nn.Linear(8, 12, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(self.mix(self.emb(ids)).flip(-1))  # flip: an op that mixes the channels' order

    with pytest.raises(ValueError, match="tied weights emb.weight and out.weight: axis 1 is fixed in one of them"):
        onefit.elasticize(Projected(), (torch.randint(0, 12, (1, 4)),))


def test_a_gpt2_language_model_keeps_its_tied_head_through_extraction_and_a_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    torch.manual_seed(0)
    model, ids = transformers.GPT2LMHeadModel(config).eval(), torch.randint(0, 100, (2, 6))
    family = onefit.elasticize(model, (ids[:1],))
    arch = family.space.min()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer heads than GPT-2's config can describe
        sub = family.extract(arch)
    assert sub.lm_head.weight is sub.transformer.wte.weight
    assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
    assert onefit.count_params(family, family.space.max()) == sum(p.numel() for p in model.parameters())
    family.save(tmp_path)  # safetensors refuses a tensor under two names: it is written once
    again = onefit.saved.restore_(onefit.elasticize(model, (ids[:1],)), tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_an_embedding_called_by_keyword_is_elastic_like_a_positional_one():
    class Keyword(nn.Module):  # nn.Embedding's own keyword: input=
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(20, 16), nn.Linear(16, 4)

        def forward(self, ids):
            return self.out(self.emb(input=ids)).mean(1)

    torch.manual_seed(0)
    model, ids = Keyword().eval(), torch.randint(0, 20, (2, 5))
    family = onefit.elasticize(model, (ids,), onefit.ElasticConfig(width=(0.5, 1.0), depth=False))
    arch = family.space.min()
    with torch.no_grad(), family.activate(arch):
        assert torch.equal(family(ids), family.extract(arch)(ids))
    assert torch.allclose(family.extract(family.space.max())(ids), model(ids))
