"""The channel-coupling walk, rule by rule, seen through what a user gets: which dimensions exist
and their choices, the exact reason a width stays whole, and sub-models that compute what the
elastic model computes (attention calls and their options, embeddings, layer norms,
concatenations, reshapes, permutes and indexing)."""

import pytest
import torch
from torch import nn

import onefit


def _groups(family):
    """{producer layer: group} of every group the plan knows."""
    return {p: g for g in family.plan.groups.values() for p in g.producers}


def _rows(model, example):
    return {row.name: row for row in onefit.inspect(model, example).layers}


def _same(a, b):
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def _extraction_matches(family, model, inputs, arch):
    """The largest arch computes the original; ``arch`` extracted computes the elastic model under it."""
    with torch.no_grad():
        assert _same(family(*inputs), model(*inputs))
        with family.activate(arch):
            elastic = family(*inputs)
        sub = family.extract(arch).eval()
        assert _same(sub(*inputs), elastic), (sub(*inputs), elastic)
    return sub


# -- nn.MultiheadAttention ------------------------------------------------------------------------

class _Projected(nn.Module):
    """Queries, keys and values from three layers of their own, attended, then an MLP."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 16), nn.Linear(6, 16), nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        return self.out(self.attn(self.q(x), self.k(x), self.v(x), need_weights=False)[0])


def test_the_layers_feeding_queries_keys_and_values_each_keep_the_attention_embedding_width():
    torch.manual_seed(0)
    model = _Projected().eval()
    family = onefit.elasticize(model, (torch.randn(2, 5, 6),))
    groups = _groups(family)
    for name in ("q", "k", "v"):
        assert groups[name].frozen == "attn: an attention keeps its embedding width"
    assert family.space.names == ["heads:attn", "width:out.0"]
    _extraction_matches(family, model, (torch.randn(3, 7, 6),), family.space.min())


class _Attention(nn.Module):
    """A Linear, an attention built by ``attention()``, called by ``call(attn, h)``, then an MLP."""

    def __init__(self, call, attention=lambda: nn.MultiheadAttention(16, 4, batch_first=True)):
        super().__init__()
        self.call = call
        self.inp, self.attn = nn.Linear(6, 16), attention()
        self.out = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x):
        out = self.call(self.attn, self.inp(x))
        return self.out(out[0])


@pytest.mark.parametrize("attention", [
    lambda: nn.MultiheadAttention(16, 4, batch_first=True, kdim=8, vdim=8),
    lambda: nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True),
    lambda: nn.MultiheadAttention(16, 4, batch_first=True, add_zero_attn=True),
], ids=["kdim", "bias_kv", "zero_attn"])
def test_an_attention_of_a_kind_onefit_does_not_shrink_is_kept_whole_with_the_reason(attention):
    def call(attn, h):
        kv = h[..., :8] if attn.kdim == 8 else h
        return attn(h, kv, kv, need_weights=False)

    torch.manual_seed(0)
    model, x = _Attention(call, attention).eval(), torch.randn(2, 5, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:out.0"]
    assert _rows(model, (x,))["attn"].width_out == "fixed: attn: an attention of a kind onefit does not shrink"
    _extraction_matches(family, model, (x,), family.space.min())


@pytest.mark.parametrize("call", [
    lambda attn, h: attn(h, h, h, is_causal=True, need_weights=False),
    lambda attn, h: attn(h, h, h, None, False, None, True, True),  # every argument by position
], ids=["keyword", "positional"])
def test_an_attention_told_is_causal_without_a_mask_is_kept_whole_with_the_reason(call):
    model, x = _Attention(call).eval(), torch.randn(2, 5, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:out.0"]
    assert _rows(model, (x,))["attn"].width_out == "fixed: attn: is_causal without an attn_mask"


def test_heads_of_an_odd_number_of_channels_can_each_be_dropped():
    model = _Attention(lambda attn, h: attn(h, h, h, need_weights=False),
                       lambda: nn.MultiheadAttention(12, 4, batch_first=True))
    model.inp = nn.Linear(6, 12)
    model.out[0] = nn.Linear(12, 12)
    family = onefit.elasticize(model.eval(), (torch.randn(2, 5, 6),))
    assert family.space["heads:attn"].choices == (1, 2, 3, 4)  # heads of 3 channels
    assert _groups(family)["attn"].multiple == 3


class _Masked(nn.Module):
    """An attention called as ``how`` says, returning what it returns (output through an MLP, and
    its weights)."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.inp, self.attn = nn.Linear(6, 16), nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x, padding):
        h = self.inp(x)
        t = x.shape[1]
        causal = torch.ones_like(padding[0])[None].expand(t, -1).triu(1)  # (T, T) bool: True is not attended
        if self.how == "default":
            out, weights = self.attn(h, h, h)
        elif self.how == "per-head":
            out, weights = self.attn(h, h, h, average_attn_weights=False)
        elif self.how == "no-weights":
            out, weights = self.attn(h, h, h, need_weights=False)
        elif self.how == "positional":  # key_padding_mask, need_weights, attn_mask, average_attn_weights
            out, weights = self.attn(h, h, h, padding, True, causal, False)
        elif self.how == "positional-no-weights":
            out, weights = self.attn(h, h, h, padding, False, causal)
        elif self.how == "float-mask":
            additive = torch.zeros_like(causal, dtype=h.dtype).masked_fill(causal, float("-inf"))  # as numbers
            out, weights = self.attn(h, h, h, attn_mask=additive, need_weights=False)
        return self.out(out), weights


@pytest.mark.parametrize("how", ["default", "per-head", "no-weights", "positional", "positional-no-weights",
                                 "float-mask"])
def test_a_sub_model_attention_returns_what_the_traced_call_asked_for(how):
    torch.manual_seed(0)
    model = _Masked(how).eval()
    x, padding = torch.randn(3, 5, 6), torch.arange(5)[None, :] >= torch.tensor([5, 3, 4])[:, None]
    family = onefit.elasticize(model, (x, padding))
    assert family.space["heads:attn"].choices == (1, 2, 3, 4)
    arch = {**family.space.max(), "heads:attn": 2, "width:out.0": 6}
    sub = _extraction_matches(family, model, (x, padding), arch)
    with torch.no_grad():
        weights = sub(x, padding)[1]
    expected = {"default": (3, 5, 5), "per-head": (3, 2, 5, 5), "positional": (3, 2, 5, 5)}.get(how)
    assert (weights is None) if expected is None else tuple(weights.shape) == expected


def test_multihead_attention_counts_its_tokens_on_the_sequence_axis_batch_first_or_not():
    from onefit.cost.counts import layer_costs

    def attention_macs(batch_first, shape):
        torch.manual_seed(0)
        model = _Attention(lambda attn, h: attn(h, h, h, need_weights=False),
                           lambda: nn.MultiheadAttention(16, 4, batch_first=batch_first)).eval()
        family = onefit.elasticize(model, (torch.randn(*shape),))
        return [next(r["macs"] for r in layer_costs(family, arch) if r["name"] == "attn")
                for arch in (family.space.max(), family.space.min())]

    # batch 2, 5 tokens: (B, T, E) with batch_first, (T, B, E) without; q, k, v and out projections
    # of 5 tokens (16 x 16 each) and two 5 x 5 products over 16 channels, then over 4 (one head)
    expected = [16 * 16 * 5 * 4 + 2 * 5 * 5 * 16, 16 * 4 * 5 * 4 + 2 * 5 * 5 * 4]
    assert attention_macs(False, (5, 2, 6)) == attention_macs(True, (2, 5, 6)) == expected


# -- embeddings -------------------------------------------------------------------------------

class _Embedded(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.emb, self.mix, self.head = embedding, nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.emb(ids))))


class _ScaledEmbedding(nn.Embedding):
    def forward(self, ids):
        return super().forward(ids) * 2.0


@pytest.mark.parametrize("embedding, reason", [
    (lambda: nn.Embedding(20, 8, max_norm=1.0), "an embedding with max_norm renormalises its rows in place; kept whole"),
    (lambda: _ScaledEmbedding(20, 8), "_ScaledEmbedding has a forward of its own; kept whole"),
], ids=["max_norm", "own_forward"])
def test_an_embedding_onefit_cannot_slice_is_kept_whole_and_what_reads_it_says_so(embedding, reason):
    torch.manual_seed(0)
    model, ids = _Embedded(embedding()).eval(), torch.randint(0, 20, (2, 5))
    rows = _rows(model, (ids,))
    assert (rows["emb"].width_in, rows["emb"].width_out, rows["emb"].elastic) == (f"fixed: {reason}",) * 2 + (False,)
    assert rows["mix"].width_in == "fixed (output of layer {} (emb))".format(type(model.emb).__name__)
    family = onefit.elasticize(model, (ids,))
    assert family.space.names == ["width:mix"]
    _extraction_matches(family, model, (torch.randint(0, 20, (3, 7)),), family.space.min())


def test_an_embedding_reads_token_ids_and_counts_one_row_per_token():
    from onefit.cost.counts import layer_costs

    torch.manual_seed(0)
    model, ids = _Embedded(nn.Embedding(20, 8)).eval(), torch.randint(0, 20, (2, 5))
    family = onefit.elasticize(model, (ids,))
    assert family.space.names == ["width:emb", "width:mix"]
    arch = {"width:emb": 4, "width:mix": 6}
    _extraction_matches(family, model, (torch.randint(0, 20, (3, 7)),), arch)
    row = next(r for r in layer_costs(family, arch) if r["name"] == "emb")
    assert (row["params"], row["positions"], row["elements"]) == (20 * 4, 5, 20 + 5 * 4)


# -- layer norms ------------------------------------------------------------------------------

class _Normed(nn.Module):
    """A Linear over (B, 4, 6) inputs, a LayerNorm as ``norm`` builds it, an MLP."""

    def __init__(self, norm):
        super().__init__()
        self.fc, self.norm = nn.Linear(6, 8), norm
        self.mix, self.head = nn.Linear(8, 10), nn.Linear(10, 3)

    def forward(self, x):
        return self.head(torch.relu(self.mix(self.norm(self.fc(x)))))


def test_a_layer_norm_over_two_dimensions_keeps_its_input_whole_with_the_reasons():
    torch.manual_seed(0)
    model, x = _Normed(nn.LayerNorm((4, 8))).eval(), torch.randn(2, 4, 6)
    family = onefit.elasticize(model, (x,))
    assert _groups(family)["fc"].frozen == "used by layer LayerNorm (norm)"
    assert family.space.names == ["width:mix"]
    rows = _rows(model, (x,))
    assert (rows["norm"].width_in, rows["norm"].elastic) == ("fixed: LayerNorm over 2 dimensions", False)
    assert rows["mix"].width_in == "fixed (output of layer LayerNorm (norm))"
    _extraction_matches(family, model, (torch.randn(3, 4, 6),), family.space.min())


def test_a_layer_norm_over_the_channels_shrinks_with_them_and_adapters_learn_its_scale():
    torch.manual_seed(0)
    model, x = _Normed(nn.LayerNorm(8)).eval(), torch.randn(2, 4, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:fc", "width:mix"]
    sub = _extraction_matches(family, model, (x,), {"width:fc": 2, "width:mix": 5})
    assert sub.norm.normalized_shape == (2,)
    adapters = onefit.adapt(family, ranks=(2,))
    assert adapters.norms == ["norm"]


class _NormedMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(1, 6, 3, padding=1), nn.LayerNorm(5), nn.Linear(6 * 4 * 5, 3)

    def forward(self, x):  # (B, 1, 4, 5): the norm runs over the width of the map, not its channels
        return self.head(self.norm(self.conv(x)).flatten(1))


def test_a_layer_norm_over_another_axis_than_the_channels_keeps_them_whole_with_the_reason():
    with pytest.raises(ValueError, match="norm reads another axis than the channels"):
        onefit.elasticize(_NormedMap(), (torch.randn(2, 1, 4, 5),))


# -- fixed widths from ops ----------------------------------------------------------------------

def test_a_layer_after_an_unknown_op_on_the_input_names_that_op_through_the_ops_between():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.head = nn.Linear(6, 16), nn.Linear(16, 3)

        def forward(self, x):
            return self.head(torch.relu(self.first(torch.relu(torch.cumsum(x, dim=-1)))))

    rows = _rows(Cumulative(), (torch.randn(2, 6),))
    assert rows["first"].width_in == "fixed (output of op cumsum (cumsum))"


# -- concatenation ----------------------------------------------------------------------------

class _Joined(nn.Module):
    """Two branches joined by ``join(a, b)`` into a head."""

    def __init__(self, join, head_in=12, b=4):
        super().__init__()
        self.join = join
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, b)
        self.head = nn.Linear(head_in, 3)

    def forward(self, x):
        return self.head(self.join(self.a(x), self.b(x)))


def test_a_concatenation_given_by_keywords_shrinks_each_branch():
    torch.manual_seed(0)
    model, x = _Joined(lambda a, b: torch.cat(tensors=[a, b], dim=-1)).eval(), torch.randn(2, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:a", "width:b"]
    assert family.plan.layers["head"].in_segments == ((_groups(family)["a"].id, 8), (_groups(family)["b"].id, 4))
    sub = _extraction_matches(family, model, (torch.randn(3, 6),), {"width:a": 2, "width:b": 1})
    assert sub.head.in_features == 3


def test_a_concatenation_along_the_batch_keeps_both_branches_whole_with_the_reason():
    model = _Joined(lambda a, b: torch.cat([a, b]), head_in=8, b=8)  # dim 0 by default
    with pytest.raises(ValueError) as err:
        onefit.elasticize(model, (torch.randn(2, 6),))
    assert "used by cat along another axis than the channels (cat)" in str(err.value)
    assert "reads another axis" not in str(err.value)


class _FlatJoin(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(5, 6)
        self.mix, self.head = nn.Linear(4 * 9 + 6, 10), nn.Linear(10, 2)

    def forward(self, image, extra):  # a flattened map beside a vector: channels of 9 features and of 1
        joined = torch.cat([self.conv(image).flatten(1), self.fc(extra)], 1)
        return self.head(torch.relu(self.mix(joined)))


def test_a_concatenation_of_a_flattened_map_keeps_the_map_whole_with_the_reason():
    torch.manual_seed(0)
    model, inputs = _FlatJoin().eval(), (torch.randn(2, 1, 3, 3), torch.randn(2, 5))
    family = onefit.elasticize(model, inputs)
    assert _groups(family)["conv"].frozen == "used by cat along another axis than the channels (cat)"
    assert family.space.names == ["width:mix"]
    _extraction_matches(family, model, inputs, family.space.min())


def test_a_reshape_of_a_concatenation_keeps_its_branches_whole_with_the_reason():
    model = _Joined(lambda a, b: torch.cat([a, b], -1).reshape(-1, 3, 4).sum(1), head_in=4)
    with pytest.raises(ValueError, match=r"used by reshape of a concatenation \(reshape\)"):
        onefit.elasticize(model, (torch.randn(2, 6),))


# -- reshape, permute, indexing ---------------------------------------------------------------

class _Mapped(nn.Module):
    """Conv features flattened by ``flat`` into an MLP."""

    def __init__(self, flat):
        super().__init__()
        self.flat = flat
        self.conv, self.fc, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 9, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.flat(torch.relu(self.conv(x))))))


@pytest.mark.parametrize("flat", [lambda h: h.view((h.size(0), -1)), lambda h: h.reshape([h.shape[0], -1])],
                         ids=["view-tuple", "reshape-list"])
def test_a_reshape_given_its_sizes_as_one_sequence_flattens_the_channels(flat):
    torch.manual_seed(0)
    model, x = _Mapped(flat).eval(), torch.randn(2, 1, 3, 3)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:conv", "width:fc"]
    assert family.plan.layers["fc"].in_unit == 9
    sub = _extraction_matches(family, model, (x,), {"width:conv": 2, "width:fc": 4})
    assert sub.fc.in_features == 18


def test_a_flat_reshape_of_a_score_keeps_that_score_whole_with_the_reason():
    class Scorer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.score = nn.Linear(6, 8), nn.Linear(8, 1)

        def forward(self, x):
            return self.score(torch.relu(self.a(x))).reshape(-1)  # (B, 1) -> (B,)

    family = onefit.elasticize(Scorer(), (torch.randn(2, 6),))
    assert _groups(family)["score"].frozen == "used by reshape to a fixed shape (2,) (reshape)"
    assert family.space.names == ["width:a"]


class _Tokens(nn.Module):
    """(B, T, 6) tokens through a Linear, moved by ``move``, into a head."""

    def __init__(self, move, head_in=8):
        super().__init__()
        self.move = move
        self.fc, self.head = nn.Linear(6, 8), nn.Linear(head_in, 3)

    def forward(self, x):
        return self.head(self.move(torch.relu(self.fc(x))))


@pytest.mark.parametrize("move", [
    lambda h: h.permute((0, 2, 1)).mean(-1),  # dims as one tuple
    lambda h: h.permute([0, 2, 1]).permute(0, 2, 1)[:, 0],
    lambda h: h[:, -1],  # an int removes the tokens' axis
    lambda h: h[:, None, 1:].mean((1, 2)),  # None adds an axis before the channels
    lambda h: h[..., None, :][:, 2, 0],
], ids=["permute-tuple", "permute-list", "last-token", "new-axis", "ellipsis"])
def test_moving_or_indexing_the_tokens_keeps_the_channels_elastic(move):
    torch.manual_seed(0)
    model, x = _Tokens(move).eval(), torch.randn(2, 5, 6)
    family = onefit.elasticize(model, (x,))
    assert family.space.names == ["width:fc"]
    sub = _extraction_matches(family, model, (torch.randn(3, 5, 6),), {"width:fc": 2})
    assert sub.head.in_features == 2


@pytest.mark.parametrize("move, head_in, reason", [
    (lambda h: h[..., :4], 4, "used by indexing the channels (getitem)"),
    (lambda h: h[:, torch.tensor([0, 2])].mean(1), 8, "used by indexing by a tensor or by computed bounds (getitem)"),
    (lambda h: h[:, h.shape[1] - 1], 8,  # the shape's getitem comes first
     "used by indexing by a tensor or by computed bounds (getitem_1)"),
], ids=["channels", "by-tensor", "computed-bounds"])
def test_indexing_onefit_cannot_follow_keeps_the_channels_whole_with_the_reason(move, head_in, reason):
    with pytest.raises(ValueError) as err:
        onefit.elasticize(_Tokens(move, head_in), (torch.randn(2, 5, 6),))
    assert reason in str(err.value)


class _GroupedHeads(nn.Module):
    """A grouped convolution over (B, C, T), its channels then split into heads of 4 that attend."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 16, 1)
        self.grouped = nn.Conv1d(16, 16, 3, padding=1, groups=2)  # 8 channels a group
        self.proj = nn.Linear(16, 3)

    def forward(self, x):
        h = self.grouped(self.conv(x)).transpose(1, 2)  # (B, T, 16)
        b, t, _ = h.shape
        q = h.view(b, t, -1, 4).transpose(1, 2)  # (B, heads, T, 4)
        out = torch.softmax(q @ q.transpose(-2, -1), -1) @ q
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))


def test_heads_split_from_a_grouped_convolution_keep_its_whole_groups():
    torch.manual_seed(0)
    model, x = _GroupedHeads().eval(), torch.randn(2, 3, 5)
    family = onefit.elasticize(model, (x,))
    group = _groups(family)["conv"]
    assert (group.kind, group.multiple) == ("heads", 8)
    (dim,) = [d for d in family.space if d.name == group.name]
    sub = _extraction_matches(family, model, (x,), {dim.name: min(dim.choices)})
    assert sub.grouped.out_channels == 8


class _JoinedProduct(nn.Module):
    """Two branches joined along the channels, then a product batched over those channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
        self.mix, self.head = nn.Conv2d(6, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        joined = torch.cat([self.a(x), self.b(x)], 1)
        scores = joined @ joined.transpose(-1, -2)  # batched over the 6 channels
        return self.head(torch.relu(self.mix(scores)).mean((2, 3)))


def test_a_product_of_a_concatenation_counts_its_whole_cost_at_every_width():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, x = _JoinedProduct().eval(), torch.randn(1, 1, 5, 5)
    family = onefit.elasticize(model, (x,))
    assert family.plan.ops and all(op.group is None for op in family.plan.ops)  # the join is kept whole
    assert "width:mix" in family.space.names
    for arch in (family.space.min(), family.space.max()):
        sub = _extraction_matches(family, model, (torch.randn(2, 1, 5, 5),), arch)
        with FlopCounterMode(display=False) as flops, torch.no_grad():
            sub(x)
        assert onefit.costs(family, arch)["macs"] == flops.get_total_flops() // 2
