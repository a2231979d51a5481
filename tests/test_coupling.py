"""What the coupling analysis ties together, and what it refuses to slice."""

import pytest
import torch
from torch import nn

import onefit
from onefit.graph import analyze
from conftest import DepthwiseNet, FlattenNet
from onefit.zoo import resnet


def groups_by_producer(plan):
    return {p: g for g in plan.groups.values() for p in g.producers}


def test_residual_adds_share_one_group_and_shortcuts_join_it():
    plan = analyze(resnet(widths=(8, 16), blocks=(2, 2)), (torch.randn(1, 1, 8, 8),))
    g = groups_by_producer(plan)
    assert g["stem.0"] is g["stages.0.0.conv2"] is g["stages.0.1.conv2"]
    assert g["stages.1.0.conv2"] is g["stages.1.0.shortcut.0"] is g["stages.1.1.conv2"]
    assert g["stages.0.0.conv1"] is not g["stem.0"]
    assert g["head"].frozen == "model output"
    assert [(s.name, s.blocks, s.min_depth) for s in plan.stages] == [("stages.0", 2, 1), ("stages.1", 2, 1)]


def test_depthwise_passes_width_and_grouped_conv_sets_a_multiple():
    plan = analyze(DepthwiseNet(), (torch.randn(1, 3, 8, 8),))
    expand = groups_by_producer(plan)["expand"]
    assert plan.layers["dw"].kind == "conv_pass" and plan.layers["dw"].out_group == expand.id
    assert plan.layers["grouped"].in_group == expand.id and expand.multiple == 8
    assert groups_by_producer(plan)["stem"] is groups_by_producer(plan)["project"]


def test_flatten_into_linear_records_the_spatial_unit():
    plan = analyze(FlattenNet(), (torch.randn(1, 1, 8, 8),))
    assert plan.layers["fc1"].in_unit == 16
    assert plan.layers["fc1"].in_group == groups_by_producer(plan)["conv2"].id


class FixedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.fc = nn.Linear(4 * 64 + 12, 2)

    def forward(self, x):
        y = self.conv(x).view(-1, 256)  # a fixed size: this width cannot shrink
        z = torch.cat([self.a(x.mean((2, 3)).repeat(1, 4)), self.shared(self.shared(self.b(x.mean((2, 3)).repeat(1, 4))))], 1)
        return self.fc(torch.cat([y, z], 1))


def test_unknown_ops_and_shared_layers_freeze_what_they_touch():
    plan = analyze(FixedView(), (torch.randn(2, 1, 8, 8),))
    g = groups_by_producer(plan)
    assert "reshape" in g["conv"].frozen or "view" in g["conv"].frozen
    assert "called more than once" in g["shared"].frozen
    assert [group.name for group in plan.groups.values() if group.elastic] == ["width:a"]
    # fc reads [fixed view | a | shared]: only the middle part can shrink.
    assert plan.layers["fc"].in_segments == ((None, 256), (g["a"].id, 6), (g["shared"].id, 6))
    assert plan.notes  # every freeze by an op is listed


class CatTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):  # (B, T, 4): concatenating along the tokens mixes no channels, but is not a channel cat
        h = self.fc1(x)
        return self.fc2(torch.cat([h, h[:, :1]], 1))


def test_cat_along_another_axis_keeps_the_channels_whole():
    plan = analyze(CatTokens(), (torch.randn(2, 3, 4),))
    assert groups_by_producer(plan)["fc1"].frozen


def test_permute_to_channels_last_keeps_tracking_the_channels():
    from onefit.zoo import convnext

    plan = analyze(convnext(dims=(8, 16), depths=(2, 1)), (torch.randn(1, 1, 8, 8),))
    g = groups_by_producer(plan)
    # pwconv2 writes back onto the residual stream, through a permute, so it joins the stem's group.
    assert g["stages.0.1.0.pwconv2"] is g["stem"] is g["stages.0.1.1.pwconv2"]
    assert plan.layers["stages.0.1.0.norm"].in_group == g["stem"].id  # LayerNorm over channels-last C
    assert g["stages.0.1.0.pwconv1"].elastic


def test_squeeze_excite_gate_joins_the_channels_it_scales():
    from onefit.zoo import mobilenet_v3

    plan = analyze(mobilenet_v3(), (torch.randn(1, 1, 8, 8),))
    g = groups_by_producer(plan)
    assert g["stages.1.0.se.expand"] is g["stages.1.0.expand.0"]
    assert plan.layers["stages.1.0.depthwise.0"].kind == "conv_pass"


class LiteralHeads(nn.Module):
    """Attention that names its head count as a literal: its heads cannot follow a smaller width."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 4, 4).permute(2, 0, 3, 1, 4)
        out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, 16))


def test_heads_split_with_minus_one_shrink_by_whole_heads_and_literals_freeze():
    from onefit.zoo import vit

    plan = analyze(vit(dim=32, heads=4, depth=1), (torch.randn(1, 1, 8, 8),))
    g = groups_by_producer(plan)
    heads = g["blocks.0.attn.q"]
    assert heads is g["blocks.0.attn.k"] is g["blocks.0.attn.v"]
    assert (heads.kind, heads.multiple, heads.name) == ("heads", 8, "heads:blocks.0.attn.q")
    assert plan.layers["blocks.0.attn.proj"].in_group == heads.id
    assert len(plan.ops) == 2 and all(op.owner == "blocks.0.attn" for op in plan.ops)
    frozen = analyze(LiteralHeads(), (torch.randn(2, 5, 16),))
    assert groups_by_producer(frozen)["qkv"].frozen
    assert not any(group.elastic for group in frozen.groups.values())


class _Freezes(nn.Module):
    """One op that onefit cannot shrink through, chosen by ``how``; a layer before and after it."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.grouped = nn.Conv1d(8, 4, 1, groups=2)
        self.head = nn.Linear(8 if how != "grouped" else 4, 3)

    def forward(self, x):  # x: (B, 6)
        a = self.a(x)
        if self.how == "mean_all":
            a = a - a.mean()  # a reduction over every dimension
        elif self.how == "mean_channels":
            a = a * a.mean(-1, keepdim=True).mean(-1)[:, None].expand(-1, 8)  # over the channels
        elif self.how == "sum_unequal":
            a = a + torch.cat([self.b(x), self.b(x)], -1)[:, :8]  # a concatenation joined to a group
        elif self.how == "grouped":
            return self.head(self.grouped(a[:, :, None])[:, :, 0])
        elif self.how == "flatten_heads":
            a = a.view(x.shape[0], 2, 4).flatten(0, 1).view(x.shape[0], 8)  # merges the batch with a channel split
        return self.head(torch.relu(a))


@pytest.mark.parametrize("how, layer, reason", [
    ("mean_all", "a", "mean over all dimensions"), ("mean_channels", "a", "mean over the channels"),
    ("sum_unequal", "a", "different channel layouts"),
    ("grouped", "grouped", "grouped convolution with unequal in/out widths"),
    ("flatten_heads", "a", "view to a fixed shape")])
def test_ops_onefit_cannot_slice_freeze_what_they_touch(how, layer, reason):
    torch.manual_seed(0)
    plan = analyze(_Freezes(how).eval(), (torch.randn(2, 6),))
    group = plan.groups[plan.layers[layer].out_group]
    assert group.frozen and not group.elastic
    assert any(reason in note for note in plan.notes) or reason in group.frozen, (plan.notes, group.frozen)
