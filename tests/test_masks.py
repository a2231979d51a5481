"""Attention called with causal and padding masks shrinks by heads (a mask the same for every
head follows fewer heads); one with a per-head axis keeps the attention whole, with the reason."""

import random

import pytest
import torch
from torch import nn

import onefit


class CausalLM(nn.Module):
    """A plain PyTorch language model: embedding, nn.TransformerEncoder under a causal and a
    padding mask, an output layer tied to the embedding."""

    def __init__(self, vocab=40, width=32, heads=4, layers=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, heads, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids, padding):  # (B, T) token ids, (B, T) True where padded -> (B, T, vocab)
        causal = nn.Transformer.generate_square_subsequent_mask(ids.shape[1])
        return self.out(self.enc(self.emb(ids), mask=causal, is_causal=True, src_key_padding_mask=padding))


def _padding(batch, length, lengths):
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T) bool, True where padded


def _additive(padding):
    return torch.zeros(padding.shape).masked_fill(padding, float("-inf"))  # the same mask as numbers


def test_a_transformer_encoder_under_causal_and_padding_masks_shrinks_by_heads_ffn_and_depth():
    torch.manual_seed(0)
    model = CausalLM().eval()
    example = (torch.randint(0, 40, (2, 7)), _additive(_padding(2, 7, [7, 5])))
    family = onefit.elasticize(model, example)
    assert {d.kind for d in family.space} == {"heads", "width", "depth"}
    assert sum(d.kind == "heads" for d in family.space) == 3
    x, pad = torch.randint(0, 40, (3, 9)), _additive(_padding(3, 9, [9, 4, 6]))  # other inputs than the example
    with torch.no_grad():
        expected = model(x, pad)
        assert torch.allclose(family(x, pad), expected, atol=1e-5)
        assert torch.allclose(onefit.sort_(family)(x, pad), expected, atol=1e-5)
        for arch in (family.space.min(), family.space.sample(random.Random(0))):
            with family.activate(arch):
                elastic = family(x, pad)
            sub = family.extract(arch).eval()
            assert not [m for m in sub.modules() if type(m).__module__.startswith("onefit")]
            assert torch.allclose(sub(x, pad), elastic, atol=1e-6)
            assert onefit.count_params(family, arch) == sum(p.numel() for p in sub.parameters())
            # the mask reaches every head: a token cannot see the ones after it
            changed = x.clone()
            changed[:, -1] = (changed[:, -1] + 1) % 40
            assert torch.allclose(sub(changed, pad)[:, :-1], sub(x, pad)[:, :-1], atol=1e-6)


def test_the_masked_sub_model_exports_to_onnx_with_parity_on_other_masks(tmp_path):
    from onefit.export import export

    torch.manual_seed(0)
    example = (torch.randint(0, 40, (2, 7)), _additive(_padding(2, 7, [7, 5])))
    family = onefit.elasticize(CausalLM().eval(), example)
    sub = family.extract(family.space.min()).eval()
    report = export(sub, tmp_path / "lm.onnx", example, exporter="dynamo")  # other batches: the example's mask rows
    assert report.cosine > 0.99999


class Attending(nn.Module):
    def __init__(self, mask_shape=None):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(6, 16), nn.MultiheadAttention(16, 4, batch_first=True), \
            nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
        self.mask_shape = mask_shape

    def forward(self, x, padding):
        h = self.inp(x)
        causal = torch.ones_like(padding[0])[None].expand(x.shape[1], -1).triu(1)  # (T, T): True is not attended
        if self.mask_shape == "per-head":
            causal = causal.expand(x.shape[0] * 4, -1, -1)
        return self.out(self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0])


def test_multihead_attention_with_boolean_masks_shrinks_and_its_extraction_refuses_other_masks():
    torch.manual_seed(0)
    model = Attending().eval()
    x, pad = torch.randn(3, 5, 6), _padding(3, 5, [5, 3, 4])
    family = onefit.elasticize(model, (x, pad))
    assert family.space["heads:attn"].choices == (1, 2, 3, 4)
    arch = {**family.space.max(), "heads:attn": 2}
    with torch.no_grad():
        assert torch.allclose(family(x, pad), model(x, pad), atol=1e-5)
        with family.activate(arch):
            elastic = family(x, pad)
        sub = family.extract(arch)
        assert torch.allclose(sub(x, pad), elastic, atol=1e-6)
        with pytest.raises(Exception, match="boolean"):  # a float mask where it was traced with a boolean one
            h = sub.inp(x)
            sub.attn(h, h, h, key_padding_mask=_additive(pad), attn_mask=torch.zeros(5, 5), need_weights=False)


def test_an_attention_with_a_per_head_mask_is_kept_whole_with_the_reason():
    model = Attending(mask_shape="per-head").eval()
    x, pad = torch.randn(2, 5, 6), _padding(2, 5, [5, 3])
    report = onefit.inspect(model, (x, pad))
    (row,) = [layer for layer in report.layers if layer.name == "attn"]
    assert "per-head axis" in row.width_out and not row.elastic
