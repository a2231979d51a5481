"""Precision inside the family: bit policies in the sampler, quantized distillation, learned
quantization points, packed low-bit weights and 8-bit ONNX export."""

import doctest
import math
import random

import pytest
import torch

import onefit
from onefit.data import digits
from onefit.elastic import diffquant
from onefit.elastic.diffquant import bake_, differentiable_quantize_, point_parameters, points_bytes, quantizers
from onefit.export import packed
from onefit.train import quantized, sampler
from onefit.train import diffquant as diffquant_training
from onefit.train.diffquant import DifferentiableQuantizationConfig, learn_points
from onefit.train.quantized import QuantizedDistillationConfig, QuantizedDistillationRecipe
from onefit.train.sampler import uniform_bits

X = torch.randn(16, 1, 8, 8)
Y = torch.randint(0, 10, (16,))


def bits_family(model=None, bits=(2, 4, 8), **config):
    model = model or onefit.zoo.plain_cnn(widths=(8, 16))
    return onefit.elasticize(model, (X[:1],), onefit.ElasticConfig(bits=bits, **config))


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on the digits (the full-precision teacher) and the data."""
    torch.manual_seed(0)
    train_data, test_data = digits(batch_size=64, seed=0)
    model = onefit.train_plain(onefit.zoo.plain_cnn(widths=(8, 16)), train_data, 3, progress=False)
    return model, train_data, test_data


@pytest.mark.parametrize("module", [quantized, diffquant, diffquant_training, packed, sampler])
def test_the_module_examples_run(module):
    result = doctest.testmod(module)
    assert result.failed == 0


def test_the_sandwich_teacher_is_full_precision_and_the_smallest_lowest_bits():
    family = bits_family()
    archs = onefit.SandwichSampler(n_random=6, bit_policy="uniform")(family.space, random.Random(0))
    bits = [{v for k, v in a.items() if k.startswith("bits:")} for a in archs]
    assert bits[0] == {32} and bits[1] == {2}
    assert all(len(b) == 1 for b in bits[2:]) and len(set.union(*bits[2:])) > 1  # uniform, yet varied
    per_layer = onefit.SandwichSampler(n_random=6)(family.space, random.Random(0))
    assert any(len({v for k, v in a.items() if k.startswith("bits:")}) > 1 for a in per_layer[2:])
    with pytest.raises(ValueError, match=r"bit_policy: 'mixed' is not one of \('per_layer', 'uniform'\)"):
        onefit.SandwichSampler(bit_policy="mixed")


def test_uniform_bits_never_lowers_a_layer_below_what_was_asked():
    family = bits_family(bits=(4, 8), bits_layers={"4": (8,)})
    arch = uniform_bits(family.space, 4)
    assert family.bits(arch) == {"0.0.0": 4, "0.1.0": 4, "1.0.0": 4, "1.1.0": 4, "4": 8}


@pytest.mark.parametrize("teacher", ["inplace", "external", "none"])
def test_a_quantized_distillation_step_reaches_the_full_precision_weights(teacher):
    torch.manual_seed(0)
    family = bits_family()
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(2, 4), teacher=teacher))
    optimizer = torch.optim.SGD(family.parameters(), lr=0.1)
    before = [p.detach().clone() for p in family.parameters()]
    external = onefit.zoo.plain_cnn(widths=(8, 16)).eval() if teacher == "external" else None
    out = recipe.step(family, (X, Y), optimizer, teacher=external)
    assert math.isfinite(out["loss_largest"]) and math.isfinite(out["loss_mean"])
    conv = family.module.get_submodule("0.1.0")
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0  # through the STE
    assert any(not torch.equal(p, q) for p, q in zip(before, family.parameters()))
    assert conv.active_bits is None  # activate() restored the full-precision state


def test_quantized_distillation_refuses_bad_configs():
    with pytest.raises(ValueError, match=r"bits: bit-width must be one of \(2, 3, 4, 8, 32\), got 5"):
        QuantizedDistillationConfig(bits=(5,))
    with pytest.raises(ValueError, match="below 32"):
        QuantizedDistillationConfig(bits=(32,))
    with pytest.raises(ValueError, match="teacher"):
        QuantizedDistillationConfig(teacher="big")
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(teacher="external"))
    with pytest.raises(ValueError, match="needs a teacher module"):
        recipe.step(bits_family(), (X, Y), torch.optim.SGD(bits_family().parameters(), lr=0.1))
    no_bits = onefit.elasticize(onefit.zoo.plain_cnn(widths=(8, 16)), (X[:1],))
    with pytest.raises(ValueError, match=r"needs bits dimensions.*ElasticConfig\(bits="):
        QuantizedDistillationRecipe().step(no_bits, (X, Y), torch.optim.SGD(no_bits.parameters(), lr=0.1))


def test_quantized_distillation_beats_post_training_quantization_at_two_bits(trained):
    model, train_data, test_data = trained
    family = bits_family(model, bits=(2,), width=(1.0,), depth=False)
    arch = uniform_bits(family.space, 2)
    ptq = onefit.evaluate(onefit.recalibrate_bn(family.extract(arch), train_data), test_data)
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(2,), teacher="external"))
    optimizer = torch.optim.Adam(family.parameters(), lr=2e-3)
    onefit.train(family, train_data, recipe, epochs=1, optimizer=optimizer, teacher=model, progress=False)
    distilled = onefit.evaluate(onefit.recalibrate_bn(family.extract(arch), train_data), test_data)
    # seeds 0-2 of this setup: PTQ 40-53 %, one epoch of distillation 51-64 % (11 points or more above)
    assert distilled >= ptq + 5, (ptq, distilled)
    sub = family.extract(arch)
    with torch.no_grad(), family.activate(arch):  # extraction bakes the trained levels exactly
        assert torch.allclose(sub.eval()(X), family.eval()(X), atol=1e-5)


def test_points_start_at_quantiles_stay_sorted_and_only_they_learn(trained):
    model, train_data, _ = trained
    student = student_copy(model)
    weight = student[0][1][0].weight.detach().clone()
    differentiable_quantize_(student, bits=3)
    scaled = (weight / weight.abs().amax((1, 2, 3), keepdim=True)).flatten()
    start = torch.quantile(scaled, (torch.arange(8) + 0.5) / 8)
    assert torch.allclose(point_parameters(student)[1], start)
    config = DifferentiableQuantizationConfig(bits=3, lr=0.05)  # large steps, so points would cross
    learned = learn_points(student_copy(model), list(train_data)[:6], config, epochs=2, teacher=model,
                           progress=False)
    for points in point_parameters(learned):
        assert torch.equal(points, torch.sort(points).values)
    assert not torch.allclose(point_parameters(learned)[1], start)  # they learned
    layer = quantizers(learned)[1]
    assert torch.equal(layer.parametrizations.weight.original, weight)  # the weights stayed fixed
    assert len(torch.unique(layer.weight)) > 8  # 8 points per layer, times one scale per channel
    assert all(len(torch.unique(row / row.abs().max())) <= 8 for row in layer.weight.detach().flatten(1))


def student_copy(model):
    copy = onefit.zoo.plain_cnn(widths=(8, 16))
    copy.load_state_dict(model.state_dict())
    return copy


def test_baked_points_equal_the_parametrized_forward_and_their_size_is_accounted(trained):
    model = student_copy(trained[0]).eval()
    differentiable_quantize_(model, bits={"0.0.0": 2, "4": 4})
    with torch.no_grad():
        before = model(X)
    weights = {n: p.numel() for n, p in student_copy(trained[0]).named_parameters() if n.endswith("weight")}
    params = sum(p.numel() for p in student_copy(trained[0]).parameters())
    quantized_bytes = math.ceil(weights["0.0.0.weight"] * 2 / 8) + 4 * 4 + 4 * 8 \
        + math.ceil(weights["4.weight"] * 4 / 8) + 4 * 16 + 4 * 10  # codes, 2^b points, a scale per output
    assert points_bytes(model) == quantized_bytes + 4 * (params - weights["0.0.0.weight"] - weights["4.weight"])
    plain = bake_(model)
    assert type(plain[0][0][0]) is torch.nn.Conv2d and not quantizers(plain)
    with torch.no_grad():
        assert torch.equal(plain(X), before)
    with pytest.raises(ValueError, match="no Linear or convolution called"):
        differentiable_quantize_(student_copy(trained[0]), bits={"fc": 4})
    with pytest.raises(ValueError, match="bits: bit-width must be one of"):
        DifferentiableQuantizationConfig(bits=6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_weights_rebuild_the_sub_model_at_the_size_costs_reports(bits):
    torch.manual_seed(bits)
    family = bits_family(bits=(bits,))
    arch = {**family.space.sample(random.Random(bits)), **{k: bits for k in family.space.names if k.startswith("bits:")}}
    sub = family.extract(arch).eval()
    weights = packed.pack(sub, family.bits(arch))
    rows = {r["name"]: r["bytes"] for r in onefit.cost.counts.layer_costs(family, arch)}
    assert weights.nbytes == sum(rows[name] for name in family.bits(arch))
    rebuilt = packed.unpack_(family.extract(family.space.complete({k: v for k, v in arch.items()
                                                                   if not k.startswith("bits:")})).eval(), weights)
    with torch.no_grad():
        assert torch.allclose(rebuilt(X), sub(X), atol=1e-5)
    with pytest.raises(ValueError, match="do not hold 2-bit levels"):
        packed.pack(family.extract(family.space.max()), {"0.0.0": 2})


def test_an_8_bit_sub_model_exports_to_int8_qdq_with_parity(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    model, train_data, test_data = trained
    family = bits_family(model, bits=(4, 8), width=(1.0,), depth=False)
    arch = uniform_bits(family.space, 8)
    sub = onefit.recalibrate_bn(family.extract(arch), train_data)
    example = (next(iter(test_data))[0][:4],)
    report = onefit.export(sub, tmp_path / "q8.onnx", example, quantize="int8", calibration=train_data,
                           eval_data=test_data, bits=family.bits(arch))
    assert report.method == "static-qdq" and report.cosine > 0.999
    assert abs(report.accuracy["change"]) <= 1.0
    mixed = {**family.bits(arch), "4": 32}  # the head stays fp32: its weights are not quantized
    onefit.export(sub, tmp_path / "mixed.onnx", example, quantize="int8", calibration=train_data, bits=mixed)
    import onnx

    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in {i.name for i in graph.initializer}
    low = uniform_bits(family.space, 4)
    with pytest.raises(ValueError, match="ONNX Runtime has no sub-8-bit integer kernels"):
        onefit.export(family.extract(low), tmp_path / "q4.onnx", example, quantize="int8",
                      calibration=train_data, bits=family.bits(low))
    assert not (tmp_path / "q4.onnx").exists()
    report = onefit.export(family.extract(low), tmp_path / "q4.onnx", example, bits=family.bits(low))
    assert report.method == "fp32"  # the 4-bit levels as fp32 values: exact, stored no smaller


def test_a_search_over_bits_trades_error_for_weight_bytes(trained):
    model, train_data, test_data = trained
    family = bits_family(model, bits=(2, 8), width=(0.5, 1.0), depth=False)
    problem = onefit.family_problem(family, test_data, calibration=train_data, objectives=("error", "weight_bytes"))
    front = onefit.search(problem, onefit.RandomSearch(seed=0), budget=5, progress=False)
    assert len(front.evaluated) == 5 and all(t.error is None for t in front.evaluated)
    assert len({t.metrics["weight_bytes"] for t in front.evaluated}) > 1  # bits change the size
    assert any(d.kind == "bits" for d in problem.space)


def test_the_inspect_command_shows_bits_and_refuses_a_bad_bit_width():
    from typer.testing import CliRunner

    from onefit.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["inspect", "onefit.zoo:mlp", "--bits", "2,8", "--json"])
    assert out.exit_code == 0, out.output
    report = __import__("json").loads(out.output)
    assert any(name.startswith("bits:") for name in report["dimensions"])
    table = runner.invoke(app, ["inspect", "onefit.zoo:mlp", "--bits", "2,8"]).output
    assert "bits" in table and "weights take 4,336 to 344,104 bytes" in table
    bad = runner.invoke(app, ["inspect", "onefit.zoo:mlp", "--bits", "5"])
    assert bad.exit_code == 2 and "bit-width must be one of (2, 3, 4, 8, 32), got 5" in bad.output
