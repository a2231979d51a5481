"""Bad input, everywhere a user can give it: each gets an error that names the problem."""

import json

import pytest
import torch
from torch import nn

import onefit
from onefit.checkpoint import CheckpointError, build_from_source, load_training_state
from onefit.search import NSGA2Search
from onefit.search.study import storage_url
from onefit.tasks import DataError, DistillationTask, first_output
from onefit.train import recipe_from, register_recipe


def small_family():
    torch.manual_seed(0)
    return onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (torch.randn(2, 1, 8, 8),))


@pytest.mark.parametrize("kwargs, message", [
    ({"width": "0.5"}, "a tuple of fractions"),
    ({"width": (0.0, 1.0)}, r"fractions must lie in \(0, 1\]"),
    ({"bits": 4}, "a non-empty tuple of bit-widths"),
    ({"bits": (5,)}, "bit-width must be one of"),
    ({"depth": (0,)}, "positive block counts"),
    ({"activation_bits": 8}, "set bits or bits_layers too"),
])
def test_elastic_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        onefit.ElasticConfig(**kwargs)


def test_elastic_config_options_and_json_round_trip():
    config = onefit.ElasticConfig(options={"toy": {"levels": [1, 2]}}, rank=None)
    assert config.option("toy") == (("levels", (1, 2)),) and config.option("other", 7) == 7
    assert config.rank_choices("1", 16) is None  # no rank setting: the layer stays dense
    again = onefit.ElasticConfig(**json.loads(json.dumps(config.__dict__)))
    assert again == config and hash(again) == hash(config)


def test_family_kinds_and_restrictions_are_checked():
    family = small_family()
    with pytest.raises(KeyError, match="no dimension kind 'tokens'"):
        family.kind("tokens")
    dim = family.space["width:1"]
    wider = onefit.Space([onefit.Dimension(dim.name, dim.kind, (*dim.choices, dim.choices[-1] * 2))])
    with pytest.raises(ValueError, match="with choices left out"):
        family.restrict_(wider, by="a test")
    smaller = onefit.Space([onefit.Dimension(dim.name, dim.kind, dim.choices[1:])])
    family.restrict_(smaller, by="a test")
    assert family.space == smaller and family.space_history == [{"by": "a test", "choices": {dim.name: list(dim.choices[1:])}}]
    family.restrict_(smaller, by="again")  # nothing changes: nothing recorded
    assert len(family.space_history) == 1
    assert family.ranks(family.space.max()) == {}  # no rank dimensions
    assert onefit.elasticize(onefit.zoo.mlp(hidden=8, layers=1), torch.randn(2, 1, 8, 8)).space.names  # a bare tensor


def test_training_refuses_what_it_cannot_do(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    batches = [(torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    with pytest.raises(ValueError, match="checkpoints hold families"):
        onefit.train(model, batches, onefit.SortedNetRecipe(), epochs=1, checkpoint=tmp_path / "x", progress=False)
    family = small_family()
    onefit.train(family, batches, epochs=1, checkpoint=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="trained without gradient noise"):
        onefit.train(small_family(), batches, epochs=2, checkpoint=tmp_path / "run", gradient_noise=0.1, progress=False)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        family.save(tmp_path / "plain")
        load_training_state(tmp_path / "plain", torch.optim.SGD(family.parameters(), lr=0.1))


def test_recipes_register_and_rebuild_by_name():
    with pytest.raises(TypeError, match="needs a class attribute 'name'"):
        register_recipe(type("Nameless", (), {}))
    with pytest.raises(ValueError, match="unknown recipe 'sgdr'; known:"):
        recipe_from({"recipe": "sgdr"})
    from onefit.train import Recipe

    with pytest.raises(NotImplementedError):  # the base class leaves step to each recipe
        Recipe().step(None, None, None)


def test_tasks_name_the_format_they_expect():
    teacher = nn.Linear(3, 2)
    task = DistillationTask(teacher, kind="cosine", n_inputs=2)
    with pytest.raises(DataError, match="distillation task needs inputs"):
        task.check((torch.randn(2, 3),), (torch.randn(1, 3), torch.randn(1, 3)))
    assert task.describe() == {"task": "distillation", "kind": "cosine", "temperature": 1.0}
    assert task.error(0.75) == pytest.approx(0.25) and DistillationTask(teacher).error(75.0) == pytest.approx(0.25)
    assert torch.equal(first_output({"logits": torch.ones(2)}), torch.ones(2))
    assert first_output((torch.zeros(1), "extra")).shape == (1,)
    classify = onefit.tasks.ClassificationTask()
    with pytest.raises(DataError, match="dtype float64; the family was built for float32"):
        classify.check((torch.randn(2, 3).double(), torch.zeros(2, dtype=torch.long)), (torch.randn(1, 3),))


def test_searchers_and_storages_refuse_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="population must be >= 4"):
        NSGA2Search(population=2)
    with pytest.raises(ValueError, match="crossover in \\[0, 1\\]"):
        NSGA2Search(crossover=2.0)
    assert storage_url(tmp_path).endswith("/study.db")  # a folder holds the study file


def test_elastic_layers_refuse_what_they_cannot_slice():
    with pytest.raises(TypeError, match="padding_mode='zeros'"):
        onefit.elasticize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                                        nn.Linear(256, 2)), (torch.randn(1, 1, 8, 8),))
    with pytest.raises(TypeError, match="numeric padding"):
        onefit.elasticize(nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), nn.Flatten(), nn.Linear(256, 2)),
                          (torch.randn(1, 1, 8, 8),))
    family = onefit.elasticize(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)), (torch.randn(1, 2, 6, 6),))
    with pytest.raises(ValueError, match="got 5 input channels, holds only 2"):
        family(torch.randn(1, 5, 6, 6))
    assert "ElasticConv" not in repr(family.extract(family.space.min())) and "Conv2d(2, 4" in repr(family.module[0])


def test_checkpoint_sources_are_checked():
    with pytest.raises(CheckpointError, match="records no model factory"):
        build_from_source(None)
    with pytest.raises(CheckpointError, match="kwargs must be a JSON object"):
        build_from_source({"factory": "onefit.zoo:mlp", "kwargs": [1]})
    assert isinstance(build_from_source({"factory": "onefit.zoo:mlp", "kwargs": {"hidden": 8}}), nn.Module)


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": (), "archs": ()}, "give at least one student"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"distill_weight": 1.5}, r"distill_weight must lie in \[0, 1\]"),
    ({"teacher": "oracle"}, "teacher: 'oracle' is not one of"),
    ({"bits": (32,)}, "students run below 32 bits"),
])
def test_quantized_distillation_config_names_the_field(kwargs, message):
    from onefit.train import QuantizedDistillationConfig

    with pytest.raises(ValueError, match=message):
        QuantizedDistillationConfig(**kwargs)


def test_predictor_search_names_its_settings():
    from onefit.search import PredictorSearch

    with pytest.raises(ValueError, match="predictor must be one of"):
        PredictorSearch(predictor="oracle")
    with pytest.raises(ValueError, match="initial >= 4"):
        PredictorSearch(initial=1)


def test_export_refuses_unknown_options(tmp_path):
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="quantize must be one of"):
        onefit.export(model, tmp_path / "m.onnx", (torch.randn(1, 4),), quantize="int4")
    with pytest.raises(ValueError, match="exporter must be one of"):
        onefit.export(model, tmp_path / "m.onnx", (torch.randn(1, 4),), exporter="tflite")
    with pytest.raises(ValueError, match="example_inputs must be a tensor or a tuple of tensors"):
        onefit.export(model, tmp_path / "m.onnx", ("not a tensor",))
    with pytest.raises(ValueError, match="cannot run layers below 8 bits"):
        onefit.export(model, tmp_path / "m.onnx", (torch.randn(1, 4),), quantize="int8", bits={"fc": 4})
    assert not list(tmp_path.iterdir())


def test_low_rank_and_attention_layers_refuse_what_they_cannot_do():
    from onefit.elastic.attention import ElasticMultiheadAttention
    from onefit.elastic.lowrank import ElasticLowRankConv, ElasticLowRankLinear

    with pytest.raises(ValueError, match="grouped convolution cannot be factorized"):
        ElasticLowRankConv.from_dense(nn.Conv2d(4, 4, 3, groups=2), (1, 2))
    layer = ElasticLowRankLinear.from_dense(nn.Linear(4, 3), (1, 3))
    with pytest.raises(ValueError, match="got 6 inputs, holds only 4"):
        layer(torch.randn(2, 6))
    assert "rank 3" in repr(layer)
    with pytest.raises(TypeError, match="equal q/k/v widths"):
        ElasticMultiheadAttention.from_plain(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))
    attention = ElasticMultiheadAttention.from_plain(nn.MultiheadAttention(8, 2, batch_first=True))
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="the same for every head; got shape"):
        attention(x, x, x, attn_mask=torch.zeros(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_causal is a hint that attn_mask is the causal mask"):
        attention(x, x, x, is_causal=True)
