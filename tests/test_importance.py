import pytest
import torch

import onefit
from conftest import MODELS, randomize_norms


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sorting_preserves_the_function(name):
    build, shape = MODELS[name]
    torch.manual_seed(1)
    model = randomize_norms(build())
    x = torch.randn(*shape)
    family = onefit.elasticize(model, (x,)).eval()
    with torch.no_grad():
        before = family(x)
        onefit.sort_(family)
        after = family(x)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item() + 1e-6


def test_sorting_puts_the_heaviest_channels_first():
    model = onefit.zoo.mlp(hidden=8, layers=1, norm=False)
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(8.0)[:, None].expand(8, 64))  # row i has L1 norm 64 * i
    family = onefit.sort_(onefit.elasticize(model, (torch.randn(1, 1, 8, 8),)))
    rows = family.module[1].weight.abs().sum(1)
    assert torch.equal(rows, torch.sort(rows, descending=True).values)
    assert rows[0] == 64 * 7


def test_importance_is_pluggable():
    calls = []

    def reverse_index(producers):
        calls.append(len(producers))
        return -torch.arange(producers[0].weight.shape[0], dtype=torch.float)

    family = onefit.elasticize(onefit.zoo.mlp(hidden=8, layers=1), (torch.randn(1, 1, 8, 8),))
    weight = family.module[1].weight.detach().clone()
    onefit.sort_(family, importance=reverse_index)
    assert calls and torch.equal(family.module[1].weight, weight)  # "keep the order" is a no-op


CALIBRATED = [onefit.ActivationImportance, onefit.TaylorImportance]


@pytest.mark.parametrize("importance", CALIBRATED, ids=["activation", "taylor"])
@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2", "mha", "temporal_cnn"])
def test_sorting_by_calibration_data_preserves_the_function(name, importance):
    build, shape = MODELS[name]
    torch.manual_seed(1)
    model = randomize_norms(build())
    x = torch.randn(*shape)
    family = onefit.elasticize(model, (x,)).eval()
    data = [(torch.randn(4, *shape[1:]), torch.randint(0, 2, (4,))) for _ in range(2)]
    with torch.no_grad():
        before = family(x)
    onefit.sort_(family, importance(data))
    with torch.no_grad():
        after = family(x)
    assert (after - before).abs().max().item() <= 1e-5 * before.abs().max().item() + 1e-6
    assert all(p.grad is None for p in family.parameters())  # no parameter gradient was touched


class DeadUnit(torch.nn.Module):
    """Hidden unit 0 has the largest weights but never fires (a bias far below its inputs)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
        with torch.no_grad():
            self.fc.weight[0] *= 50
            self.fc.bias[0] = -1e4

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


@pytest.mark.parametrize("importance", CALIBRATED, ids=["activation", "taylor"])
def test_a_unit_with_large_weights_that_never_fires_ranks_last_by_data_and_first_by_l1(importance):
    torch.manual_seed(0)
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    model = DeadUnit()
    by_l1, by_data = (onefit.elasticize(model, (torch.randn(1, 4),)) for _ in range(2))
    dead = model.fc.weight[0].detach().clone()
    onefit.sort_(by_l1)
    onefit.sort_(by_data, importance(data))
    assert torch.equal(by_l1.module.fc.weight[0], dead)  # the heaviest row first
    assert torch.equal(by_data.module.fc.weight[-1], dead)  # carries nothing on the data: last
    with pytest.raises(ValueError, match="batches must be a positive integer"):
        importance(data, batches=0)
    with pytest.raises(ValueError, match="the calibration data gave no batch"):
        onefit.sort_(by_data, importance([]))


def test_calibrated_importance_sorts_a_decoder_by_heads_ffn_and_hidden_and_keeps_it():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    torch.manual_seed(0)
    model, ids = transformers.LlamaForCausalLM(config).eval(), torch.randint(0, 100, (4, 9))
    family = onefit.elasticize(model, (ids[:1],), onefit.ElasticConfig(hidden=(0.5, 1.0)))
    data = [(ids, ids)]  # language modelling: the ids are their own labels
    for importance in (onefit.ActivationImportance(data, onefit.tasks.LanguageModelingTask()),
                       onefit.TaylorImportance(data, onefit.tasks.LanguageModelingTask())):
        scores = importance.measure(family)
        kinds = {family.plan.groups[g].kind for g in scores}
        assert kinds == {"heads", "width", "hidden"}
        assert all(s.shape == (family.plan.groups[g].size,) and torch.isfinite(s).all() for g, s in scores.items())
        onefit.sort_(family, importance)
        with torch.no_grad():
            assert torch.allclose(family(ids).logits, model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=1e-2),
                                  lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)])
def test_sorting_with_the_optimizer_commutes_with_training(make):
    """Sort mid-training with the optimizer's state moved along: the next steps give the same
    network as if nothing had been sorted; the optimizer's state left behind would not."""
    import copy

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    family = onefit.elasticize(onefit.zoo.resnet(widths=(8, 16), blocks=(1, 1)), (x[:1],))

    def steps(family, optimizer, n):
        for _ in range(n):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(family(x), y).backward()
            optimizer.step()

    optimizer = make(family.parameters())
    steps(family, optimizer, 3)
    outputs = {}
    for how in ("unsorted", "sorted with state", "sorted without"):
        twin = copy.deepcopy((family, optimizer))
        if how != "unsorted":
            onefit.sort_(twin[0], optimizer=twin[1] if how == "sorted with state" else None)
        steps(*twin, 3)
        with torch.no_grad():
            outputs[how] = twin[0].eval()(x)
    assert torch.allclose(outputs["sorted with state"], outputs["unsorted"], atol=1e-4)
    assert not torch.allclose(outputs["sorted without"], outputs["unsorted"], atol=1e-4)
