"""More tests that kill mutants `make mutants` found surviving in the core (importance sorting and
calibration, SortedNet and quantized steps, ONNX export checks, dimension kinds, counts, NSGA-II):
each pins one behaviour a user relies on that the rest of the suite left open. Small and fast."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onefit
from onefit.dims.adapter import LowRankDelta
from onefit.elastic.base import ElasticLayer
from onefit.elastic.registry import register
from onefit.search.nsga2 import NSGA2Search, make_offspring
from onefit.search.base import Trial
from onefit.search.problem import Problem
from onefit.space import Dimension, Space
from onefit.tasks import ClassificationTask
from onefit.train import (OrderedRankConfig, QuantizedDistillationConfig, QuantizedDistillationRecipe, SortedNetConfig,
                          SortedNetRecipe)
from onefit.train.sorted import nested_backward


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and torch.allclose(got, want.to(got.dtype), rtol=1e-4, atol=1e-6)


# -- importance sorting ------------------------------------------------------------------------
class Dense(nn.Module):
    """A layer type of the user's own, y = x W^T + b, whose elastic version has no permute methods."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x):
        return x @ self.weight.T + self.bias


@register(Dense)
class ElasticDense(ElasticLayer, nn.Module):
    coupling = "linear"
    active_out = None

    @classmethod
    def plain_sizes(cls, plain):
        return plain.weight.shape[1], plain.weight.shape[0]

    @classmethod
    def from_plain(cls, plain: Dense) -> "ElasticDense":
        layer = cls()
        layer.weight, layer.bias = plain.weight, plain.bias
        return layer

    def forward(self, x):
        out = self.weight.shape[0] if self.active_out is None else self.active_out
        return x @ self.weight[:out, : x.shape[-1]].T + self.bias[:out]


class ConvDense(nn.Module):
    """Conv features flattened into the user's layer: each conv channel is 16 of its input columns."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc, self.out = Dense(4 * 16, 8), Dense(8, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.conv(x)).flatten(1))))


def _rows_by_index(layer: nn.Module) -> None:
    """Output channel i gets L1 norm i + 1: sorting by L1 reverses the channels."""
    with torch.no_grad():
        w = layer.weight
        norms = w.abs().flatten(1).sum(1)
        w.mul_((torch.arange(1.0, w.shape[0] + 1) / norms).view(-1, *[1] * (w.dim() - 1)))


def test_sorting_permutes_the_input_columns_of_a_user_layer_without_permute_methods():
    torch.manual_seed(0)
    family = onefit.elasticize(ConvDense(), (torch.randn(2, 1, 4, 4),), onefit.ElasticConfig(width=(0.5, 1.0)))
    _rows_by_index(family.module.conv)  # sorting reverses the conv channels and the fc rows
    _rows_by_index(family.module.fc)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        before = family(x)
        fc_before = family.module.fc.weight.clone()
        onefit.sort_(family)
        assert torch.allclose(family(x), before, atol=1e-6)
    # the heaviest conv channel (3) is first: its 16 columns lead, taken from the heaviest fc row (7)
    assert torch.equal(family.module.fc.weight[0, :16], fc_before[7, 48:64])


class TiedAux(nn.Module):
    """An output layer tied to the embedding, then another layer reading the same channels."""

    def __init__(self, vocab: int = 12, width: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight
        self.aux = nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        return self.out(h) + self.aux(h)


def test_sorting_permutes_a_tied_weight_once_and_the_layers_after_its_second_holder():
    torch.manual_seed(0)
    family = onefit.elasticize(TiedAux(), (torch.randint(0, 12, (1, 5)),), onefit.ElasticConfig(width=(0.5, 1.0)))
    assert list(family.plan.layers) == ["emb", "out", "aux"]
    x = torch.randint(0, 12, (3, 5))
    with torch.no_grad():
        before = family(x)
        onefit.sort_(family)
        assert torch.allclose(family(x), before, atol=1e-5)


def test_sorting_leaves_a_group_kept_whole_in_place_and_still_sorts_the_next_one():
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (torch.randn(2, 1, 8, 8),),
                               onefit.ElasticConfig(layers={"1": (1.0,)}))  # the first hidden group: no dimension
    assert family.space.names == ["width:4"] and family.plan.groups[0].elastic
    for name in ("1", "4"):
        _rows_by_index(family.module.get_submodule(name))
    first, second = (family.module.get_submodule(n).weight.detach().clone() for n in ("1", "4"))
    onefit.sort_(family)
    assert torch.equal(family.module.get_submodule("1").weight, first)  # no prefix to rank for: untouched
    assert torch.equal(family.module.get_submodule("4").weight, second.flip(0))


def test_channels_of_equal_importance_keep_their_order():
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=64, layers=1), (torch.randn(2, 1, 8, 8),))
    state = {k: v.clone() for k, v in family.module.state_dict().items()}
    onefit.sort_(family, importance=lambda producers: torch.ones(producers[0].weight.shape[0]))
    assert all(torch.equal(v, state[k]) for k, v in family.module.state_dict().items())


class Attention(nn.Module):
    """Grouped-query attention laid out as Llama's (q/k/v/o projections, ``head_dim``,
    ``num_key_value_groups``): 4 query heads, 2 key/value heads, each read by 2 query heads."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 2, head_dim: int = 4):
        super().__init__()
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.head_dim, self.num_key_value_groups = head_dim, heads // kv_heads

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        k, v = (z.repeat_interleave(self.num_key_value_groups, dim=1) for z in (k, v))
        return self.o_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1))


class GatedMLP(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 8):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.down_proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = Attention(), GatedMLP()

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class TinyDecoder(nn.Module):
    """Two Llama-style blocks in ``layers`` (read off the modules, as for transformers' Llama)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return self.head(x)


def _decoder():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    return onefit.elasticize(TinyDecoder().eval(), (x,), onefit.ElasticConfig(kv_heads=(0.5, 1.0))), x


def test_sorting_whole_key_value_groups_keeps_the_function():
    family, x = _decoder()
    attention = family.module.layers[1].self_attn
    with torch.no_grad():  # key/value head 1 (and the query heads reading it) the heavier: sorting swaps the groups
        for proj in (attention.k_proj, attention.v_proj):
            proj.weight[8:].mul_(4.0)
        before, q_before = family(x), attention.q_proj.weight.clone()
        onefit.sort_(family)
        assert torch.allclose(family(x), before, atol=1e-5)
    assert torch.equal(attention.q_proj.weight[:8], q_before[8:])  # q_proj's segments moved with their group


def test_the_heads_of_a_skipped_decoder_block_are_idle():
    family, _ = _decoder()
    arch = family.space.min()
    assert family.skipped(arch) == ("layers.1.",)
    assert family.idle(arch) == {"heads:layers.1.self_attn", "kv:layers.1.self_attn", "width:layers.1.mlp.gate_proj"}


# -- importance from calibration data ----------------------------------------------------------
class TwoHeads(nn.Module):
    """One hidden group read by two layers; the loss uses only the first output."""

    def __init__(self):
        super().__init__()
        self.fc, self.aux, self.out = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        a = self.aux(h * 2)
        return self.out(h), a


def _two_heads():
    torch.manual_seed(0)
    family = onefit.elasticize(TwoHeads(), (torch.randn(2, 4),), onefit.ElasticConfig(width=(0.5, 1.0)))
    data = [(torch.randn(6, 4) * 0.05, torch.randint(0, 3, (6,))) for _ in range(2)]  # small: raw scores below 1
    return family, data


def _mean_one(s: torch.Tensor) -> torch.Tensor:
    return s / s.mean()


def test_activation_importance_is_each_readers_l2_norm_over_samples_normalised_then_summed():
    family, data = _two_heads()
    hidden = [torch.relu(family.module.fc(x)).detach() for x, _ in data]
    out_reads = torch.stack([h ** 2 for h in hidden]).sum((0, 1)).sqrt()  # over both batches
    aux_reads = torch.stack([(2 * h) ** 2 for h in hidden]).sum((0, 1)).sqrt()
    assert out_reads.mean() < 1  # the normalisation divides by the mean, never clamps it up to 1
    scores = onefit.ActivationImportance(data).measure(family)
    assert set(scores) == {0}
    assert _close(scores[0], _mean_one(out_reads) + _mean_one(aux_reads))


def test_taylor_importance_averages_activation_times_gradient_and_skips_a_reader_the_loss_does_not_use():
    family, data = _two_heads()
    family.eval()
    total = 0
    for x, y in data:
        h = torch.relu(family.module.fc(x)).detach().requires_grad_()
        (g,) = torch.autograd.grad(F.cross_entropy(family.module.out(h), y), [h])
        total = total + (h * g).detach().sum(0)
    scores = onefit.TaylorImportance(data).measure(family)
    assert _close(scores[0], _mean_one(total.abs() / len(data)))  # aux's input never reaches the loss


class Concat(nn.Module):
    """A head reading the model input, then two hidden groups, side by side."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(4, 8), nn.Linear(4, 6), nn.Linear(18, 3)

    def forward(self, x):
        return self.head(torch.cat([x, torch.relu(self.fc1(x)), torch.relu(self.fc2(x))], -1))


def test_a_concatenation_is_scored_part_by_part_and_its_fixed_part_skipped():
    torch.manual_seed(0)
    family = onefit.elasticize(Concat(), (torch.randn(2, 4),), onefit.ElasticConfig(width=(0.5, 1.0)))
    assert family.plan.layers["head"].in_segments == ((None, 4), (0, 8), (1, 6))
    data = [(torch.randn(6, 4) * 0.05, torch.randint(0, 3, (6,))) for _ in range(2)]
    reads = torch.stack([torch.cat([x, torch.relu(family.module.fc1(x)), torch.relu(family.module.fc2(x))], -1)
                         for x, _ in data]).detach()
    features = (reads ** 2).sum((0, 1)).sqrt()
    scores = onefit.ActivationImportance(data).measure(family)
    assert set(scores) == {0, 1}
    assert _close(scores[0], _mean_one(features[4:12])) and _close(scores[1], _mean_one(features[12:18]))


def test_calibration_reads_at_most_batches_batches_eight_by_default():
    family, _ = _two_heads()
    data = [(torch.randn(6, 4) * (i + 1), torch.randint(0, 3, (6,))) for i in range(9)]
    one = onefit.ActivationImportance(data, batches=1).measure(family)
    assert _close(one[0], onefit.ActivationImportance(data[:1]).measure(family)[0])
    eight = onefit.ActivationImportance(data).measure(family)
    assert _close(eight[0], onefit.ActivationImportance(data[:8]).measure(family)[0])
    assert not _close(eight[0], onefit.ActivationImportance(data, batches=9).measure(family)[0])


def test_calibrated_importance_errors_name_the_importance():
    with pytest.raises(ValueError, match=r"^ActivationImportance: batches must be a positive integer, got 0$"):
        onefit.ActivationImportance([], batches=0)
    with pytest.raises(ValueError, match=r"^TaylorImportance: batches must be a positive integer, got 2\.0$"):
        onefit.TaylorImportance([], batches=2.0)
    family, _ = _two_heads()
    with pytest.raises(ValueError, match=r"^TaylorImportance: the calibration data gave no batch$"):
        onefit.TaylorImportance([]).measure(family)


# -- SortedNet and quantized steps -------------------------------------------------------------
def test_sortednet_config_accepts_its_bounds_and_names_the_config_in_errors():
    for ok in (dict(temperature=0.5), dict(distill_weight=0.0), dict(distill_weight=1.0)):
        SortedNetConfig(**ok)
    cases = [(dict(temperature=0), "temperature must be > 0, got 0"),
             (dict(temperature=-1.0), "temperature must be > 0, got -1.0"),
             (dict(distill_weight=1.5), r"distill_weight must lie in \[0, 1\], got 1.5"),
             (dict(distill_weight=-0.1), r"distill_weight must lie in \[0, 1\], got -0.1"),
             (dict(distill="bogus"), r"distill: 'bogus' is not one of \('none', 'inplace', 'teacher'\)")]
    for config in (SortedNetConfig, OrderedRankConfig):
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=rf"^{config.__name__}\.{message}$"):
                config(**kwargs)


def _family_and_batch(config=None):
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),),
                               config or onefit.ElasticConfig(width=(0.5, 1.0), depth=False))
    with torch.no_grad():
        for p in family.parameters():
            p.normal_(0, 0.5)
    return family.eval(), (torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,)))


def test_teacher_distillation_teaches_every_sub_model_the_external_teachers_outputs():
    family, (x, y) = _family_and_batch()
    torch.manual_seed(5)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    config = SortedNetConfig(distill="teacher", distill_weight=0.3, temperature=2.0)
    archs = [family.space.max(), family.space.min()]
    losses = nested_backward(family, archs, (x, y), config, teacher=teacher)
    with torch.no_grad():
        soft = teacher(x)
        for arch, loss in zip(archs, losses):  # the largest learns from the teacher too
            with family.activate(arch):
                student = family(x)
            p = F.softmax(soft / 2.0, -1)
            kl = (p * (torch.log(p) - F.log_softmax(student / 2.0, -1))).sum(-1).mean()
            assert loss == pytest.approx((0.7 * F.cross_entropy(student, y) + 0.3 * 4.0 * kl).item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"^SortedNetConfig\.distill='teacher' needs a teacher module passed to "
                                         r"step\(\)$"):
        nested_backward(family, archs, (x, y), config)


class StaleGradients:
    """An optimizer over ``params`` (lr 0) that clears gradients as ``torch.optim.Optimizer.zero_grad`` does;
    torch's own would import torch._dynamo, seconds of this file's budget."""

    def __init__(self, params):
        self.params = list(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad = None if set_to_none else p.grad.zero_()

    def step(self) -> None:
        pass


def _stale_parameter_optimizer(family):
    stray = nn.Parameter(torch.ones(3))  # in the optimizer, used by no sub-model, with a gradient left over
    stray.grad = torch.ones(3)
    return stray, StaleGradients([*family.parameters(), stray])


def test_a_sortednet_step_clears_gradients_left_from_before():
    family, batch = _family_and_batch()
    stray, optimizer = _stale_parameter_optimizer(family)
    SortedNetRecipe(SortedNetConfig(seed=1)).step(family, batch, optimizer)
    assert stray.grad is None  # a zero gradient would still be weight-decayed and count in momentum


def test_a_quantized_step_clears_gradients_left_from_before():
    family, batch = _family_and_batch(onefit.ElasticConfig(width=(1.0,), depth=False, bits=(4,)))
    stray, optimizer = _stale_parameter_optimizer(family)
    QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(4,))).step(family, batch, optimizer)
    assert stray.grad is None


# -- ONNX export -------------------------------------------------------------------------------
def test_int8_export_refuses_bad_and_low_bit_widths_naming_the_layer(tmp_path):
    model, x = nn.Linear(4, 2), (torch.randn(1, 4),)
    with pytest.raises(ValueError, match=r"^bits\['fc'\]: bit-width must be one of \(2, 3, 4, 8, 32\), got 5$"):
        onefit.export(model, tmp_path / "m.onnx", x, quantize="int8", bits={"fc": 5})
    with pytest.raises(ValueError) as low:
        onefit.export(model, tmp_path / "m.onnx", x, quantize="int8", bits={"fc": 4, "head": 8})
    assert str(low.value) == (
        "quantize='int8' cannot run layers below 8 bits {'fc': 4}: ONNX Runtime has no sub-8-bit integer kernels. "
        "Export with quantize=None (fp32 values holding the low-bit levels, as fast as fp32), use "
        "onefit.export.packed.pack for their packed size, or choose 8 bits for these layers")
    assert not list(tmp_path.iterdir())


class MeanOutput(ClassificationTask):
    """A task whose metric is the mean output, not accuracy."""

    metric_name = "mean output"

    def metric(self, predict, data) -> float:
        return float(torch.cat([predict(self.inputs(b)) for b in data]).mean())


def test_export_reports_the_given_tasks_metric_for_pytorch_and_onnx(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(2)]
    report = onefit.export(model, tmp_path / "m.onnx", (torch.randn(1, 4),), eval_data=data, task=MeanOutput())
    with torch.no_grad():
        expected = float(torch.cat([model(x) for x, _ in data]).mean())
    acc = report.accuracy
    assert set(acc) == {"metric", "torch", "onnx", "change"} and acc["metric"] == "mean output"
    assert acc["torch"] == pytest.approx(expected, abs=1e-6) and acc["onnx"] == pytest.approx(expected, abs=1e-5)
    assert acc["change"] == pytest.approx(acc["onnx"] - acc["torch"], abs=1e-12)


# -- adapters ----------------------------------------------------------------------------------
def test_a_low_rank_delta_adds_the_prefix_of_its_update_to_a_linear_weight():
    torch.manual_seed(0)
    delta = LowRankDelta(out_features=4, columns=3, rank=3, shape=(4, 3))
    delta.B.data.normal_()
    delta.active_rank = 2
    weight = torch.randn(4, 3)
    assert torch.allclose(delta(weight), weight + delta.B[:, :2] @ delta.A[:2])


@pytest.mark.parametrize("kernel", [(5, 5), (5,)], ids=["2d", "1d"])
def test_a_low_rank_delta_on_a_convolution_updates_only_the_kernel_centre(kernel):
    torch.manual_seed(0)
    delta = LowRankDelta(out_features=3, columns=2, rank=2, shape=(3, 2, *kernel))
    delta.B.data.normal_()
    weight = torch.randn(3, 2, *kernel)
    centre = (slice(None), slice(None), *[2] * len(kernel))
    got = delta(weight)
    assert torch.allclose(got[centre], weight[centre] + delta.B @ delta.A)
    got[centre] = weight[centre]
    assert torch.equal(got, weight)  # every other tap untouched


def test_a_low_rank_delta_starts_as_lora_does():
    torch.manual_seed(0)
    delta = LowRankDelta(out_features=4, columns=64, rank=8, shape=(4, 64))
    bound = 1 / math.sqrt(64)  # Kaiming uniform with a = sqrt(5): U(-1/sqrt(inputs), 1/sqrt(inputs))
    assert 0.95 * bound < delta.A.abs().max().item() <= bound
    assert not delta.B.any()


def test_the_adapter_column_shows_the_ranks_or_why_a_layer_has_none():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 10))
    family = onefit.elasticize(model, (torch.randn(2, 1, 8, 8),), onefit.ElasticConfig(width=(0.5, 1.0)))
    kind = family.kind("adapter")
    assert kind.columns(family, "1") == {}  # no adapters attached
    adapters = onefit.adapt(family, ranks=(2, 8))
    assert kind.columns(family, "1") == {"adapter": ("rank (2, 8)", True)}
    assert kind.columns(family, "3") == {"adapter": ("rank 8 is more than its update can have (at most 4)", False)}
    assert kind.columns(family, "5") == {}  # the head is the task's own
    adapters.detach_()
    assert kind.columns(family, "1") == {}


# -- dimension kinds in inspect and idle -------------------------------------------------------
def _rows(model, x, config):
    return {layer.name: (layer.elastic, layer.columns) for layer in onefit.inspect(model, (x,), config).layers}


def test_inspect_counts_a_kernel_rank_or_bits_dimension_alone_as_elastic_and_notes_why_others_stay():
    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(1, 4, 5, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 4, padding=2), nn.ReLU(),
                          nn.Conv2d(4, 4, 5, padding=0), nn.ReLU(), nn.Conv2d(4, 4, (3, 5), padding=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 7 * 5, 3))
    rows = _rows(convs, torch.randn(1, 1, 10, 10), onefit.ElasticConfig(width=(1.0,), depth=False, kernel=(3,)))
    assert rows["0"] == (True, {"kernel": "kernel:0 (3, 5)"})  # padding 1 is just enough for a 3 x 3 kernel
    assert rows["2"] == (False, {"kernel": "kernel (4, 4) is not square and odd"})
    assert rows["4"] == (False, {"kernel": "padding (0, 0) too small to keep the output size with a 3 kernel"})
    assert rows["6"] == (False, {"kernel": "kernel (3, 5) is not square and odd"})
    x = torch.randn(2, 1, 8, 8)
    mlp = onefit.zoo.mlp(hidden=16, layers=1)
    rows = _rows(mlp, x, onefit.ElasticConfig(width=(1.0,), depth=False, rank_layers={"1": (0.25,), "4": (0.9,)}))
    assert rows["1"] == (True, {"rank": "rank:1 (4, 16)"})
    assert rows["4"] == (False, {"rank": "too small to factorize profitably: rank 9 takes 234 weights, dense 160"})
    rows = _rows(mlp, x, onefit.ElasticConfig(width=(1.0,), depth=False, bits=(4,)))
    assert rows["1"] == (True, {"bits": "bits:1 (4, 32)"}) and rows["2"] == (False, {})


def test_every_dimension_of_the_layers_in_a_skipped_block_is_idle():
    torch.manual_seed(0)
    config = onefit.ElasticConfig(width=(0.5, 1.0), kernel=(1,), bits=(4,), rank_layers={"stages.0.1.conv1": (0.25,)})
    family = onefit.elasticize(onefit.zoo.resnet(widths=(4, 8), blocks=(2, 2)), (torch.randn(2, 1, 8, 8),), config)
    arch = family.space.min()
    skipped = family.skipped(arch)
    assert skipped == ("stages.0.1.", "stages.1.1.")
    inside = {n for n in family.space.names if f"{n.split(':', 1)[1]}.".startswith(skipped)}
    assert {n.split(":")[0] for n in inside} == {"width", "kernel", "bits", "rank"}
    assert family.idle(arch) == inside


class Residual(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


class NestedStages(nn.Module):
    """A depth stage of two blocks, each block itself a depth stage of two residual layers."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(4, 8), nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Sequential(Residual(), Residual()), nn.Sequential(Residual(), Residual()))

    def forward(self, x):
        return self.out(self.body(self.inp(x)))


def test_the_depth_of_a_stage_inside_a_skipped_block_is_idle():
    family = onefit.elasticize(NestedStages(), (torch.randn(2, 4),))
    arch = family.space.min()
    assert family.skipped(arch) == ("body.1.", "body.0.1.", "body.1.1.")
    assert family.idle(arch) == {"depth:body.1"}
    assert family.canonical(arch)["depth:body.1"] == 2


# -- counts ------------------------------------------------------------------------------------
def test_costs_of_convolutions_depthwise_and_one_channel_layers_are_exact_integers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
                        nn.Conv2d(4, 1, 1), nn.Flatten(), nn.Linear(64, 3))
    family = onefit.elasticize(net, (torch.randn(2, 1, 8, 8),))
    got = onefit.costs(family, family.space.min())  # width 1 of 4
    # params: conv 9 + 1, depthwise 9 + 1, pointwise 1 + 1, linear 64 * 3 + 3; MACs per sample on 8 x 8 pixels
    assert got == {"params": 10 + 10 + 2 + 195, "macs": 9 * 64 + 9 * 64 + 64 + 192, "weight_bytes": 4 * 217,
                   "layers": 4, "activation_bytes": 4 * (64 + 64)}
    assert all(type(v) is int for v in got.values())
    rows = onefit.cost.counts.layer_costs(family, family.space.min())
    assert rows == [
        {"name": "0", "kind": "conv", "params": 10, "macs": 576, "positions": 64, "elements": 64 + 64, "bytes": 40},
        {"name": "2", "kind": "conv_pass", "params": 10, "macs": 576, "positions": 64, "elements": 128, "bytes": 40},
        {"name": "4", "kind": "conv", "params": 2, "macs": 64, "positions": 64, "elements": 128, "bytes": 8},
        {"name": "6", "kind": "linear", "params": 195, "macs": 192, "positions": 1, "elements": 64 + 3, "bytes": 780}]


def test_costs_count_attention_layers_and_products_in_integers():
    torch.manual_seed(0)
    encoder = onefit.elasticize(onefit.zoo.sequence_encoder(dim=16, depth=1, heads=2), (torch.randn(2, 6, 8),))
    rows = onefit.cost.counts.layer_costs(encoder, encoder.space.max())
    assert [r["kind"] for r in rows].count("mha") == 1
    assert onefit.costs(encoder, encoder.space.max())["layers"] == sum(r["kind"] in ("linear", "mha") for r in rows)
    vit = onefit.elasticize(onefit.zoo.vit(dim=16, depth=1, heads=2), (torch.randn(2, 1, 8, 8),))
    assert vit.plan.ops  # attention products, counted beside the layers
    assert all(type(v) is int for v in onefit.costs(vit, vit.space.min()).values())


class Scaled(nn.Module):
    """A free scale outside every layer, and an output weight tied to a parameter of the model itself."""

    def __init__(self):
        super().__init__()
        self.fc, self.mid, self.out = nn.Linear(4, 8), nn.Linear(8, 6), nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.full((1,), 2.0))
        self.table = nn.Parameter(torch.randn(3, 6))
        self.out.weight = self.table

    def forward(self, x):
        return self.out(torch.relu(self.mid(torch.relu(self.fc(x))))) * self.scale


def test_costs_count_a_free_parameter_and_a_tied_one_once():
    torch.manual_seed(0)
    family = onefit.elasticize(Scaled(), (torch.randn(2, 4),))
    assert family.plan.tied == [("table", "out.weight")]
    for arch in (family.space.max(), family.space.min()):
        got = onefit.costs(family, arch)
        params = sum(p.numel() for p in family.extract(arch).parameters())
        assert (got["params"], got["weight_bytes"]) == (params, 4 * params)
    assert onefit.costs(family, family.space.max())["params"] == 40 + 54 + 21 + 1


def test_a_factorized_layer_or_a_smaller_kernel_takes_four_bytes_a_parameter():
    x = torch.randn(2, 1, 8, 8)
    config = onefit.ElasticConfig(width=(1.0,), depth=False, rank_layers={"1": (0.25,)})
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (x,), config)
    got = onefit.costs(family, {"rank:1": 4})
    assert got["weight_bytes"] == 4 * got["params"] and got["params"] < onefit.costs(family, {"rank:1": 16})["params"]
    net = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.Flatten(), nn.Linear(4 * 64, 3))
    family = onefit.elasticize(net, (x,), onefit.ElasticConfig(width=(1.0,), depth=False, kernel=(3,)))
    got = onefit.costs(family, {"kernel:0": 3})
    assert got["params"] == 4 * 9 + 4 + 4 * 64 * 3 + 3 and got["weight_bytes"] == 4 * got["params"]


class OutputFirst(nn.Module):
    """The output layer declared before the embedding it shares its weight with."""

    def __init__(self, vocab: int = 12, width: int = 8):
        super().__init__()
        self.out = nn.Linear(width, vocab, bias=False)
        self.emb = nn.Embedding(vocab, width)
        self.emb.weight = self.out.weight
        self.mid = nn.Linear(width, width)

    def forward(self, ids):
        return self.out(torch.relu(self.mid(self.emb(ids))))


def test_a_tied_weight_held_second_by_an_embedding_counts_once_at_every_width():
    torch.manual_seed(0)
    family = onefit.elasticize(OutputFirst(), (torch.randint(0, 12, (1, 5)),), onefit.ElasticConfig(width=(0.5, 1.0)))
    assert family.plan.tied == [("out.weight", "emb.weight")]
    for arch, params in ((family.space.min(), 12 * 4 + 4 * 4 + 4), (family.space.max(), 12 * 8 + 8 * 8 + 8)):
        sub = family.extract(arch)
        assert onefit.costs(family, arch)["params"] == params == sum(p.numel() for p in sub.parameters())


def test_param_bytes_of_a_layer_without_a_bias_attribute():
    from onefit.dims.bits import param_bytes

    assert param_bytes(nn.Embedding(10, 4), 40, 10, 4) == 40 * 4 // 8 + 4 * 10  # weights, a scale per output


def test_an_elastic_convolution_shows_its_kernel():
    family = onefit.elasticize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 2)),
                               (torch.randn(1, 1, 8, 8),))
    assert repr(family.module[0]) == ("ElasticConv(Conv2d(1, 4, kernel=(3, 3), groups=1), active_out=None, "
                                      "active_bits=None)")


# -- NSGA-II -----------------------------------------------------------------------------------
def _space(sizes) -> Space:
    return Space([Dimension(f"d{i}", "width", tuple(range(1, s + 1))) for i, s in enumerate(sizes)])


def test_a_one_choice_dimension_draws_no_random_numbers_in_mutation():
    parents = [[0, 0, 2], [2, 0, 1], [1, 0, 0]]
    with_fixed = make_offspring(_space([3, 1, 3]), parents, random.Random(0), 50, crossover=0.0, mutation=1.0)
    without = make_offspring(_space([3, 3]), [[a, c] for a, _, c in parents], random.Random(0), 50,
                             crossover=0.0, mutation=1.0)
    assert [[a, c] for a, _, c in with_fixed] == without and {b for _, b, _ in with_fixed} == {0}


def test_nsga2_keeps_asking_once_every_arch_is_told():
    space = _space([2, 2])
    problem = Problem(space, {"x": lambda a: float(sum(a.values())), "y": lambda a: float(-sum(a.values()))},
                      ("x", "y"))
    s = NSGA2Search(population=4, seed=0)
    s.setup(problem)
    asked = [s.ask() for _ in range(space.size)]
    assert len({space.key(a) for a in asked}) == space.size
    for arch in asked:
        s.tell(Trial(arch, (float(sum(arch.values())), float(-sum(arch.values())))))
    again = [s.ask() for _ in range(10)]  # nothing new to breed: a random repeat, never an error
    assert all(space.validate(a) == a for a in again)


class _TiedConvolutions(nn.Module):
    """Two convolutions holding one weight (kept whole), then an elastic head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.b(torch.relu(self.a(torch.relu(self.stem(x))))).mean((2, 3)))


def test_a_convolution_weight_two_layers_hold_counts_once_with_its_kernel():
    model = _TiedConvolutions().eval()
    family = onefit.elasticize(model, (torch.randn(1, 1, 6, 6),))
    assert family.plan.tied == [("a.weight", "b.weight")] and family.space.names == ["width:head.0"]
    for arch in (family.space.max(), family.space.min()):
        sub = family.extract(arch)
        assert onefit.costs(family, arch)["params"] == sum(p.numel() for p in sub.parameters())
    assert onefit.costs(family, family.space.max())["params"] == sum(p.numel() for p in model.parameters())
