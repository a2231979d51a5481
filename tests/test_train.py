import random

import pytest
import torch

import onefit
from onefit.train import DataError, SortedNetConfig, SortedNetRecipe, evaluate
from onefit.data import digits


@pytest.fixture(scope="module")
def data():
    return digits(batch_size=64, seed=0)


def small_family():
    torch.manual_seed(0)
    return onefit.elasticize(onefit.zoo.mlp(hidden=32, layers=2), (torch.randn(2, 1, 8, 8),))


def test_sandwich_sampler_visits_largest_smallest_and_random():
    space = small_family().space
    archs = onefit.SandwichSampler(n_random=3)(space, random.Random(0))
    assert archs[0] == space.max() and archs[1] == space.min() and len(archs) == 5
    assert archs == onefit.SandwichSampler(n_random=3)(space, random.Random(0))
    with pytest.raises(ValueError, match="n_random"):
        onefit.SandwichSampler(n_random=-1)


def test_step_accumulates_every_sub_model_into_one_update(data):
    family = small_family()
    recipe = SortedNetRecipe(SortedNetConfig(distill="none"), onefit.SandwichSampler(n_random=0))
    optimizer = torch.optim.SGD(family.parameters(), lr=0.0)
    x, y = next(iter(data[0]))
    recipe.step(family, (x, y), optimizer)
    # With lr 0 the step leaves weights alone; the gradient must be the mean of max's and min's.
    grad = family.module[1].weight.grad.clone()
    family.zero_grad()
    expected = 0
    for arch in (family.space.max(), family.space.min()):
        with family.activate(arch):
            loss = torch.nn.functional.cross_entropy(family(x), y) / 2
        expected = expected + torch.autograd.grad(loss, family.module[1].weight)[0]
    assert torch.allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize("distill", ["none", "inplace", "teacher"])
def test_training_makes_every_sub_model_learn(data, distill):
    train_data, test_data = data
    family = small_family()
    teacher = onefit.zoo.mlp(hidden=16).eval() if distill == "teacher" else None
    history = onefit.train(family, train_data, SortedNetRecipe(SortedNetConfig(distill=distill)), epochs=3,
                           teacher=teacher, progress=False)
    assert len(history) == 3 and history[2]["loss_largest"] < history[0]["loss_largest"]
    # Chance is 10%; an untrained family stays near it.
    smallest, largest = (evaluate(onefit.recalibrate_bn(family.extract(a), train_data), test_data)
                         for a in (family.space.min(), family.space.max()))
    assert smallest > 30 and largest > 80


def test_same_seed_same_result(data):
    results, batches = [], list(data[0])[:5]
    for _ in range(2):
        family = small_family()
        onefit.train(family, batches, SortedNetRecipe(SortedNetConfig(seed=3)), epochs=1, progress=False)
        results.append(family.module[1].weight.detach().clone())
    assert torch.equal(results[0], results[1])


def test_bad_data_and_bad_configs_are_clear_errors(data):
    family = small_family()
    x, y = next(iter(data[0]))
    with pytest.raises(DataError, match=r"inputs of shape \(64, 64\); the family was built for \(batch, \*\(1, 8, 8\)\)"):
        onefit.train(family, [(x.flatten(1), y)], epochs=1, progress=False)
    with pytest.raises(DataError, match="labels"):
        onefit.train(family, [(x, y.float())], epochs=1, progress=False)
    with pytest.raises(DataError, match="pairs"):
        onefit.train(family, [x], epochs=1, progress=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        onefit.train(family, [(x, y)], SortedNetRecipe(SortedNetConfig(distill="teacher")), epochs=1, progress=False)
    with pytest.raises(ValueError, match="distill"):
        SortedNetConfig(distill="sometimes")
    with pytest.raises(ValueError, match="epochs"):
        onefit.train(family, [(x, y)], epochs=0)


def test_recalibrate_bn_matches_the_batch_statistics(data):
    model = onefit.zoo.mlp(hidden=16, layers=1)
    batches = list(data[0])[:3]
    onefit.recalibrate_bn(model, batches, batches=3)
    feats = torch.cat([model[1](model[0](x)) for x, _ in batches])
    assert torch.allclose(model[2].running_mean, feats.mean(0), atol=1e-5)
    assert not model.training


def test_elasticize_does_not_touch_batch_norm_statistics():
    model = onefit.zoo.resnet(widths=(8, 16), blocks=(2, 2)).train()
    family = onefit.elasticize(model, (torch.randn(1, 1, 8, 8),))
    model.eval(), family.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(family(x), model(x), atol=1e-6)
    assert model.training is False and family.module.stages.training is False


def test_inputs_of_another_dtype_and_labels_out_of_range_are_data_errors(data):
    family = small_family()
    x, y = next(iter(data[0]))
    for wrong in (x.double(), (x * 16).to(torch.uint8)):
        with pytest.raises(DataError, match=f"inputs of dtype {str(wrong.dtype)[6:]}; the family was built for float32"):
            onefit.train(family, [(wrong, y)], epochs=1, progress=False)
    for labels, shown in ((y.clone().fill_(10), "from 10 to 10"), (y - 1, "from -1 to")):
        with pytest.raises(DataError, match=f"labels {shown}.*10 outputs, so labels must lie in 0..9"):
            onefit.train(family, [(x, labels)], epochs=1, progress=False)
    # a batch that changes shape after the first is caught too, not only the first batch
    with pytest.raises(DataError, match=r"inputs of shape \(64, 64\)"):
        onefit.train(family, [(x, y), (x.flatten(1), y)], epochs=1, progress=False)


def test_gradient_noise_is_annealed_seeded_and_resumable(tmp_path, data):
    from onefit.train import GradientNoise

    w = torch.nn.Parameter(torch.zeros(10000))
    noisy = GradientNoise(torch.optim.SGD([w], lr=1.0), eta=0.3)
    stds = []
    for _ in range(3):
        before = w.detach().clone()
        w.grad = torch.zeros_like(w)
        noisy.step()
        stds.append((w.detach() - before).std().item())
    expected = [(0.3 / (1 + t) ** 0.55) ** 0.5 for t in range(3)]  # variance eta / (1 + t)^0.55
    assert all(abs(s - e) < 0.03 * e for s, e in zip(stds, expected)), (stds, expected)
    batches = list(data[0])[:4]
    runs = []
    for folder in ("a", "b"):
        family = small_family()
        onefit.train(family, batches, epochs=2, gradient_noise=0.01, checkpoint=tmp_path / folder, progress=False)
        runs.append(family)
    from test_recipe_contract import StopsAfter

    family = small_family()  # the same run, stopped after one epoch and resumed
    with pytest.raises(KeyboardInterrupt):
        onefit.train(family, StopsAfter(batches, 1), epochs=2, gradient_noise=0.01, checkpoint=tmp_path / "c",
                     progress=False)
    family = small_family()
    onefit.train(family, batches, epochs=2, gradient_noise=0.01, checkpoint=tmp_path / "c", progress=False)
    plain = small_family()
    onefit.train(plain, batches, epochs=2, progress=False)
    w = [f.module[1].weight for f in (*runs, family, plain)]
    assert torch.equal(w[0], w[1]) and torch.equal(w[0], w[2]) and not torch.equal(w[0], w[3])
    assert runs[0].history[-1]["gradient_noise"] == 0.01
    with pytest.raises(ValueError, match="eta must be > 0"):
        onefit.train(small_family(), batches, epochs=1, gradient_noise=-1.0, progress=False)


def test_data_without_a_length_is_counted_and_a_teacher_is_put_in_eval_mode():
    import onefit

    class Augmented:  # an augmentation wrapper: iterable again and again, no len
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return iter([(x + 0.01 * torch.randn_like(x), y) for x, y in self.batches])

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(3)]
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=1), (batches[0][0][:1],))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 10)).train()
    recipe = onefit.SortedNetRecipe(onefit.SortedNetConfig(distill="teacher"))
    history = onefit.train(family, Augmented(batches), recipe, epochs=2, teacher=teacher, progress=False)
    assert len(history) == 2 and not teacher.training  # its batch-norm statistics were not updated
    assert teacher[1].num_batches_tracked.item() == 0
