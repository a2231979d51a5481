"""Precision inside the family: bit policies in the sampler, quantized distillation, learned
quantization points, packed low-bit weights and 8-bit ONNX export."""

import doctest
import json
import math
import random

import pytest
import torch

import onefit
from conftest import said
from onefit.data import digits
from onefit.elastic import learned_points as diffquant
from onefit.elastic.learned_points import bake_, differentiable_quantize_, point_parameters, points_bytes, quantizers
from onefit.elastic.quant import calibrate_, quantize_values, weight_layer
from onefit.export import packed
from onefit.train import quantized, sampler
from onefit.train import differentiable_quantization as diffquant_training
from onefit.train.differentiable_quantization import DifferentiableQuantizationConfig, learn_points
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
    assert result.attempted > 0 and result.failed == 0


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
    assert bad.exit_code == 2 and said(bad.output, "bit-width must be one of (2, 3, 4, 8, 32), got 5")


def test_uniform_bits_refuses_a_space_with_no_bit_width_high_enough():
    from onefit.space import Dimension, Space

    space = Space([Dimension("bits:fc", "bits", (2, 4))])
    assert uniform_bits(space, 3) == {"bits:fc": 4}
    with pytest.raises(ValueError, match=r"bits:fc offers no bit-width >= 8 \(choices \(2, 4\)\)"):
        uniform_bits(space, 8)


def test_the_students_are_worked_out_once_per_space(monkeypatch):
    calls = []
    monkeypatch.setattr(quantized, "uniform_bits", lambda *a: calls.append(a) or uniform_bits(*a))
    family = bits_family()
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(2, 4), teacher="none"))
    optimizer = torch.optim.SGD(family.parameters(), lr=0.1)
    for _ in range(2):
        recipe.step(family, (X, Y), optimizer)
    assert len(calls) == 2
    students = recipe.students(family.space)
    assert [set(family.bits(a).values()) for a in students] == [{2}, {4}]
    students[0].clear()  # the caller's copy; the recipe's stays whole
    assert recipe.students(family.space)[0] and len(calls) == 2
    other = bits_family(bits=(2, 4), width=(1.0,), depth=False)
    assert recipe.students(other.space)[0] == uniform_bits(other.space, 2) and len(calls) == 4


def activation_bits_family(bits=(4, 8)):
    torch.manual_seed(0)
    family = bits_family(onefit.zoo.plain_cnn(widths=(8, 16)), bits=bits, activation_bits=8).eval()
    return calibrate_(family, [X])


def test_packing_sees_through_the_input_quantization_of_activation_bits():
    family = activation_bits_family(bits=(4,))
    arch = {**family.space.sample(random.Random(0)), **{k: 4 for k in family.space.names if k.startswith("bits:")}}
    sub = family.extract(arch).eval()
    weights = packed.pack(sub, family.bits(arch))
    assert set(weights.layers) == set(family.bits(arch))
    target = family.extract(arch).eval()
    with torch.no_grad():
        for name in weights.layers:
            weight_layer(target.get_submodule(name)).weight.zero_()
        rebuilt = packed.unpack_(target, weights)
        assert torch.allclose(rebuilt(X), sub(X), atol=1e-5)


def test_int8_export_finds_the_layers_of_a_family_with_activation_bits(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    family = activation_bits_family()
    arch = uniform_bits(family.space, 8)
    sub = family.extract(arch)
    mixed = {**family.bits(arch), "4": 32}  # the head stays fp32
    report = onefit.export(sub, tmp_path / "q8.onnx", (X[:4],), quantize="int8", calibration=[X], bits=mixed)
    assert report.method == "static-qdq"
    graph = onnx.load(str(tmp_path / "q8.onnx")).graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    # the runtime quantizes the plain layers (their inputs at the family's ranges): the fp32 head keeps its weight
    assert gemm.name == "/4/Gemm" and gemm.input[1] in {i.name for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] not in {i.name for i in graph.initializer} for n in convs)  # int8 (QDQ)


def test_pack_layer_takes_the_output_axis():
    torch.manual_seed(0)
    weight = quantize_values(torch.randn(6, 5), 3, axis=1)  # (in, out): one scale per column
    with pytest.raises(ValueError, match="do not hold 3-bit levels"):
        packed.pack_layer(weight, None, 3)
    layer = packed.pack_layer(weight, None, 3, axis=1)
    assert layer.scales.shape == (5,) and torch.equal(layer.weight(), weight)
    conv = quantize_values(torch.randn(2, 4, 3, 3), 2, axis=1)
    assert torch.equal(packed.pack_layer(conv, None, 2, axis=1).weight(), conv)


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2Model(config).eval(), torch.randint(0, 100, (3, 12))


def test_packed_gpt2_layers_keep_their_column_scales():
    model, ids = tiny_gpt2()
    family = onefit.elasticize(model, (ids,), onefit.ElasticConfig(bits=(4,)))
    arch = uniform_bits(family.space, 4)
    sub = family.extract(arch).eval()
    weights = packed.pack(sub, family.bits(arch))
    rows = {r["name"]: r["bytes"] for r in onefit.cost.counts.layer_costs(family, arch)}
    assert weights.nbytes == sum(rows[name] for name in family.bits(arch))
    assert weights.layers["h.0.attn.c_attn"].scales.shape == (96,)  # one per output column
    rebuilt = packed.unpack_(family.extract(family.space.max()).eval(), weights)
    with torch.no_grad():
        assert torch.allclose(rebuilt(ids).last_hidden_state, sub(ids).last_hidden_state, atol=1e-5)


def test_learned_points_on_gpt2_scale_per_column():
    model, ids = tiny_gpt2()
    differentiable_quantize_(model, bits=2)
    layer = model.h[0].attn.c_attn
    assert quantizers(model) and layer in quantizers(model)
    columns = layer.weight.detach().T  # (out, in)
    assert all(len(torch.unique(c / c.abs().max())) <= 4 for c in columns)
    with torch.no_grad():
        assert model(ids).last_hidden_state.isfinite().all()
    assert points_bytes(model) < 4 * sum(p.numel() for p in tiny_gpt2()[0].parameters())


def test_points_start_at_the_quantiles_also_past_torch_quantile_s_size_limit():
    torch.manual_seed(0)
    small = torch.randn(7, 13)
    scaled = (small / small.abs().amax(1, keepdim=True)).flatten()
    for bits in (2, 3):
        levels = 2**bits
        expected = torch.quantile(scaled, (torch.arange(levels, dtype=torch.float32) + 0.5) / levels)
        assert torch.allclose(diffquant.quantile_points(small, bits), expected, rtol=0, atol=1e-6)
    big = torch.ones(4097, 4096)  # 2^24 + 4096 weights: torch.quantile refuses them
    big[:2048] = -1
    assert torch.equal(diffquant.quantile_points(big, 2), torch.tensor([-1.0, -1.0, 1.0, 1.0]))


def test_learned_points_refuse_a_second_quantizer_and_freeze_what_does_not_learn(trained):
    model = student_copy(trained[0])
    differentiable_quantize_(model, bits=4)
    with pytest.raises(ValueError, match="already has learned points"):
        differentiable_quantize_(model, bits=2)
    recipe = diffquant_training.DifferentiableQuantizationRecipe(DifferentiableQuantizationConfig(bits=2))
    fresh = student_copy(trained[0])
    optimizer = recipe.prepare_(fresh)
    recipe.step(fresh, (X, Y), optimizer)
    points = {id(p) for p in point_parameters(fresh)}
    assert all(p.grad is not None for p in point_parameters(fresh))
    assert all(p.grad is None and not p.requires_grad for p in fresh.parameters() if id(p) not in points)
    trainable = diffquant_training.DifferentiableQuantizationRecipe(
        DifferentiableQuantizationConfig(bits=2, train_weights=True))
    both = student_copy(trained[0])
    groups = trainable.prepare_(both).param_groups
    assert len(groups[0]["params"]) == len(list(both.parameters()))


def test_learn_points_needs_data_with_a_length():
    stream = ((X, Y) for _ in range(2))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ValueError, match="needs data it can pass over more than once.*got a one-shot generator"):
        learn_points(model, stream, DifferentiableQuantizationConfig(bits=2), epochs=1, progress=False)
    assert not quantizers(model)  # refused before anything was attached


def test_the_inspect_command_explains_a_malformed_bits_list():
    from typer.testing import CliRunner

    from onefit.cli import app

    bad = CliRunner().invoke(app, ["inspect", "onefit.zoo:mlp", "--bits", "4,"])
    assert bad.exit_code == 2 and said(bad.output, "--bits: comma-separated integers, got '4,'")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_packing_takes_weights_on_the_gpu():
    torch.manual_seed(0)
    layer = torch.nn.Linear(10, 4).cuda()
    with torch.no_grad():
        layer.weight.copy_(quantize_values(layer.weight, 4))
    weights = packed.pack(torch.nn.Sequential(layer), {"0": 4})
    assert torch.equal(weights.layers["0"].weight(), layer.weight.detach().cpu())
    target = torch.nn.Sequential(torch.nn.Linear(10, 4)).cuda()
    assert torch.equal(packed.unpack_(target, weights)[0].weight, layer.weight)


# -- 8-bit quantization-aware training for an int8 runtime (ElasticConfig bits_shared) ------------------
def shared_bits_family(**config):
    torch.manual_seed(0)
    config = {"bits": (8,), "activation_bits": 8, "bits_shared": True, **config}
    return bits_family(onefit.zoo.plain_cnn(widths=(8, 16)), **config)


def test_one_shared_bits_dimension_quantizes_the_whole_sub_model_or_none_of_it():
    family = shared_bits_family()
    assert [d for d in family.space if d.kind == "bits"] == [onefit.Dimension("bits", "bits", (8, 32))]
    arch = {**family.space.max(), "bits": 8}
    assert set(family.bits(arch).values()) == {8} and len(family.bits(arch)) == len(family.quantizable) == 5
    assert set(family.bits(family.space.max()).values()) == {32}
    assert "bits" not in family.idle(arch)  # the shared dimension is idle only with every layer gone
    with pytest.raises(ValueError, match="bits_shared: one bits dimension for every layer needs the same bit-widths"):
        shared_bits_family(bits_layers={"4": (4,)})
    with pytest.raises(ValueError, match="bits_shared: .*set bits or bits_layers too"):
        onefit.ElasticConfig(bits_shared=True)


def test_training_observes_activation_ranges_itself_before_and_after_every_epoch():
    family = shared_bits_family()
    quantizer = family.module.get_submodule("0.1.0").input_quant
    assert not quantizer.observed  # no calibrate_ call: training starts without ranges
    data = [(X, Y)] * 2
    onefit.train(family, data, epochs=1, progress=False)
    first = quantizer.max_val.item()
    family.eval()
    with torch.no_grad(), family.activate(family.space.max()):
        before = family(X)
    calibrate_(family, [X])  # the range of the trained weights, as observed once more: unchanged
    assert quantizer.max_val.item() == pytest.approx(first)
    with torch.no_grad(), family.activate(family.space.max()):
        assert torch.equal(family(X), before)


def test_an_int8_file_of_a_quantization_aware_sub_model_rounds_inputs_as_the_family_trained(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    family = calibrate_(shared_bits_family().eval(), [X])
    sub = family.extract({**family.space.max(), "bits": 8})
    report = onefit.export(sub, tmp_path / "q8.onnx", (X[:4],), quantize="int8", calibration=[X], reduce_range=False)
    assert report.cosine >= 0.999  # against the sub-model's own fake quantization
    graph = onnx.load(str(tmp_path / "q8.onnx")).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv" and "0.1.0" in n.name)
    dequantize = next(n for n in graph.node if n.output[0] == conv.input[0])
    expected = family.module.get_submodule("0.1.0").input_quant.qparams()
    assert values[dequantize.input[1]] == pytest.approx(expected[0].item())  # the family's scale, not a new one
    assert int(values[dequantize.input[2]]) == int(expected[1])
    assert not any(n.op_type == "QuantizeLinear" and "layer" in n.name for n in graph.node)  # one rounding per input


def test_openvino_int8_of_a_quantization_aware_sub_model_keeps_the_ranges_the_family_trained(tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO does not install here (pip install 'onefit[openvino]')")
    from onefit.runtimes import runtime

    family = calibrate_(shared_bits_family().eval(), [X])
    sub = family.extract({**family.space.max(), "bits": 8})
    openvino, onnxruntime = runtime("openvino"), runtime("onnxruntime")
    built = openvino.build(sub, tmp_path / "ov", "int8", examples=(X[:4],), calibration=[X], reduce_range=False)
    assert built.method == "trained-qdq" and built.cosine >= 0.98
    assert "FakeQuantize" in built.path.read_text()  # OpenVINO runs the QDQ pairs as its int8 FakeQuantize
    ort = onnxruntime.build(sub, tmp_path / "ort", "int8", examples=(X[:4],), calibration=[X], reduce_range=False)
    x = torch.rand(7, *X.shape[1:])  # not the calibration batch
    feeds = lambda session: {session.get_inputs()[0].name: x.numpy()}
    ov_out = openvino.session(built.path).run(None, feeds(openvino.session(built.path)))[0]
    ort_out = onnxruntime.session(ort.path).run(None, feeds(onnxruntime.session(ort.path)))[0]
    assert torch.nn.functional.cosine_similarity(torch.tensor(ov_out).flatten(), torch.tensor(ort_out).flatten(),
                                                 dim=0) > 0.999  # both round as the family trained


def test_the_run_exports_archs_that_differ_only_in_the_shared_bits_once(tmp_path):
    """The front may hold a sub-model at 8 and at 32 bits; both build the same fp32 and int8 files."""
    from types import SimpleNamespace

    from onefit.run.exported import chosen
    from onefit.search.base import Trial

    family = shared_bits_family()
    small, large = family.space.min(), family.space.max()
    trials = [Trial({**small, "bits": 8}, (0.3, 1.0), metrics={"params": 10, "error": 0.3}),
              Trial({**small, "bits": 32}, (0.2, 4.0), metrics={"params": 10, "error": 0.2}),
              Trial({**large, "bits": 8}, (0.1, 9.0), metrics={"params": 90, "error": 0.1})]
    (tmp_path / "front.json").write_text(json.dumps({"objectives": ["error", "macs"],
                                                     "front": [t.to_json() for t in trials]}))
    job = SimpleNamespace(config=SimpleNamespace(export=SimpleNamespace(front=True, max_models=8, budgets=[])))
    picks = chosen(job, SimpleNamespace(path=tmp_path), family)
    assert [p["arch"] for p in picks] == [{**small, "bits": 32}, {**large, "bits": 32}]
    assert [p["name"] for p in picks] == ["m00", "m01"] and picks[0]["chosen_for"] == ["front", "front"]



def test_openvino_int8_quantizes_a_transformer_with_nncf_s_transformer_scheme(tmp_path, monkeypatch):
    """NNCF's default scheme moved a MiniLM sub-model's embeddings to cosine 0.24 of its PyTorch
    self on OpenVINO (the transformer scheme keeps the original at 0.997,
    bench/results/peers_minilm.md); a model with attention gets the transformer scheme, a CNN the
    default, and the file still passes its parity check."""
    pytest.importorskip("openvino", reason="OpenVINO does not install here (pip install 'onefit[openvino]')")
    transformers = pytest.importorskip("transformers")
    import nncf

    from onefit.runtimes import runtime
    from onefit.tasks.distillation import DistillationTask
    from onefit.zoo.minilm import SentenceEmbedder

    schemes, quantize = [], nncf.quantize
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: schemes.append(k.get("model_type")) or quantize(*a, **k))
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = SentenceEmbedder(transformers.BertModel(config)).eval()
    g = torch.Generator().manual_seed(0)

    def batch(n):  # sentences of 4 to 16 tokens, padded to 16
        lengths = torch.randint(4, 17, (n,), generator=g)
        return (torch.randint(1, 100, (n, 16), generator=g), (torch.arange(16) < lengths[:, None]).long())

    openvino = runtime("openvino")
    built = openvino.build(model, tmp_path / "bert", "int8", examples=batch(2), calibration=[batch(8) for _ in range(4)],
                           eval_data=[batch(8)], reduce_range=False, task=DistillationTask(model, "cosine", n_inputs=2))
    assert built.method == "nncf-ptq" and built.cosine >= 0.98 and built.metric["onnx"] > 0.98
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    cnn(X[:1])
    openvino.build(cnn.eval(), tmp_path / "cnn", "int8", examples=(X[:4],), calibration=[X], reduce_range=False)
    assert schemes == [nncf.ModelType.TRANSFORMER, None]


# -- 8-bit weights on ONNX Runtime's reduced range (ElasticConfig reduce_range) -------------------------
def _levels(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """``weight`` (output channels first) in units of its per-channel scale ``max|w| / qmax``."""
    flat = weight.detach().flatten(1)
    return flat / (flat.abs().amax(1, keepdim=True) / qmax)


def _file_weights(path) -> list[torch.Tensor]:
    """The dequantized int8 weights of an ONNX QDQ file."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in values and values[node.input[0]].dtype.kind == "i":
            q, scale = (torch.tensor(values[node.input[0]].astype("float32")),
                        torch.tensor(values[node.input[1]].astype("float32")))
            weights.append(q * scale.reshape(-1, *[1] * (q.dim() - 1)) if scale.dim() else q * scale)
    return weights


def test_reduced_range_8_bit_weights_train_on_the_levels_onnx_runtime_s_int8_file_holds(tmp_path):
    pytest.importorskip("onnxruntime")
    arch = lambda family: {**family.space.max(), "bits": 8}
    reduced = calibrate_(shared_bits_family(reduce_range=True).eval(), [X])
    full = calibrate_(shared_bits_family().eval(), [X])
    for family, qmax in ((reduced, 64), (full, 127)):
        sub = family.extract(arch(family))
        for layer in (m for m in sub.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))):
            levels = _levels(layer.weight, qmax)
            assert torch.allclose(levels, levels.round(), atol=1e-4)
            assert levels.abs().amax(1).round().eq(qmax).all()  # every channel reaches its largest level
        with torch.no_grad(), family.activate(arch(family)):  # training rounds as extraction bakes
            assert torch.allclose(family(X), sub(X), atol=1e-5)
    files = {}
    for name, family in (("reduced", reduced), ("full", full)):
        sub = family.extract(arch(family))
        report = onefit.export(sub, tmp_path / f"{name}.onnx", (X[:4],), quantize="int8", calibration=[X],
                               reduce_range=True)
        baked = [layer.weight.detach() for layer in sub.modules() if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))]
        stored = _file_weights(tmp_path / f"{name}.onnx")
        files[name] = (report, sum(any(w.shape == s.shape and torch.allclose(w, s, atol=1e-6) for s in stored)
                                   for w in baked), len(baked))
    report, same, count = files["reduced"]
    assert same == count and report.cosine >= 0.999  # the file holds the weights the family trained
    assert files["full"][1] < files["full"][2]  # a full-range family's weights are rounded once more


def test_reduced_range_weights_pack_and_unpack_exactly():
    family = shared_bits_family(reduce_range=True, activation_bits=None)
    arch = {**family.space.max(), "bits": 8}
    sub = family.extract(arch).eval()
    weights = packed.pack(sub, family.bits(arch))
    assert {layer.qmax for layer in weights.layers.values()} == {64}
    rebuilt = packed.unpack_(family.extract(family.space.max()).eval(), weights)
    for (name, a), b in zip(rebuilt.named_parameters(), sub.parameters()):
        assert torch.equal(a, b), name


def test_reduce_range_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="reduce_range: true or false, got 'yes'"):
        onefit.ElasticConfig(bits=(8,), reduce_range="yes")
    with pytest.raises(ValueError, match="reduce_range: sets the range of 8-bit weights, and no layer offers 8 bits"):
        onefit.ElasticConfig(bits=(4,), reduce_range=True)
    assert onefit.ElasticConfig(bits_layers={"fc": (8,)}, reduce_range=True).weight_bits() == {8, 32}


def test_the_run_trains_8_bit_weights_on_the_range_of_this_cpu_unless_told(monkeypatch):
    from onefit.run import parse_config
    from onefit.runtimes import cpu

    base = {"model": {"zoo": "mlp"}, "data": {"bundled": "digits"}}
    for reduced in (True, False):
        monkeypatch.setattr(cpu, "int8_weights", lambda flags=None, reduced=reduced: (reduced, "why"))
        auto = parse_config({**base, "elastic": {"bits": [8, 32]}})
        assert auto.elastic.elastic_config().reduce_range is reduced
        assert "reduce_range" not in auto.to_json()["elastic"]  # auto is the default, and not recorded
        fixed = parse_config({**base, "elastic": {"bits": [8, 32], "reduce_range": not reduced}})
        assert fixed.elastic.elastic_config().reduce_range is (not reduced)
    assert parse_config({**base, "elastic": {"bits": [4, 32]}}).elastic.elastic_config().reduce_range is False


def test_the_int8_files_say_which_range_and_keep_the_one_the_family_trained_on(tmp_path):
    from onefit.run.exported import int8_range
    from onefit.saved import restore_

    vnni, avx2 = {"avx2", "avx512_vnni"}, {"avx2"}
    reduced, full = calibrate_(shared_bits_family(reduce_range=True).eval(), [X]), shared_bits_family()
    assert int8_range(reduced, vnni) == (True, "8-bit weights on ONNX Runtime's reduced range (-64..64): the "
                                               "family trained them on it (elastic.reduce_range)")
    assert int8_range(full, vnni)[0] is False and "round them again" not in int8_range(full, vnni)[1]
    assert int8_range(full, avx2)[0] is True and "round them again" in int8_range(full, avx2)[1]
    reduced.save(tmp_path / "reduced")  # resumed where "auto" resolves the other way: the trained range wins
    restored = restore_(shared_bits_family().eval(), tmp_path / "reduced")
    assert restored.config.reduce_range is True
    assert all(m.reduce_range for m in restored.module.modules() if hasattr(m, "reduce_range"))
    with torch.no_grad():
        arch = {**reduced.space.max(), "bits": 8}
        with reduced.activate(arch):
            expected = reduced(X)
        with restored.activate(arch):
            assert torch.equal(restored(X), expected)
