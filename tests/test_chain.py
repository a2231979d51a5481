"""Progressive distillation into a chain: each student learns what the ones before still get
wrong, every prefix is a model of the ladder, exports as one graph, costs the sum of its students."""

import pytest
import torch
from torch import nn

import onefit
from onefit.data import digits
from onefit.train import Chain, ProgressiveDistillationConfig, ProgressiveDistillationRecipe, distill_chain


def test_a_chain_of_students_climbs_towards_the_teacher(tmp_path):
    torch.manual_seed(0)
    train, test = digits(batch_size=64)
    train = list(train)[:10]
    teacher = onefit.train_plain(onefit.zoo.resnet(widths=(8, 16), blocks=(1, 1)), train, 4, progress=False)
    students = [onefit.zoo.mlp(hidden=8, layers=1), onefit.zoo.ssm_classifier(dim=16, state=4, blocks=1),
                onefit.zoo.mlp(hidden=32, layers=1)]
    example = (torch.rand(2, 1, 8, 8),)
    chain = distill_chain(teacher, students, train, epochs_per_student=3, example_inputs=example, progress=False)
    ladder = [onefit.evaluate(chain.prefix(k), test) for k in (1, 2, 3)]
    assert ladder[-1] > ladder[0] + 3, ladder  # later students fix what the first got wrong
    costs = chain.costs()
    assert [c["params"] for c in costs] == [sum(p.numel() for s in students[:k] for p in s.parameters())
                                            for k in (1, 2, 3)]
    assert costs[0]["macs"] < costs[1]["macs"] < costs[2]["macs"]
    report = onefit.export(chain.prefix(2).eval(), tmp_path / "chain2.onnx", example, eval_data=list(test)[:2])
    assert report.cosine > 0.99999 and abs(report.accuracy["change"]) < 1e-6


def test_each_student_trains_with_the_ones_before_it_frozen():
    torch.manual_seed(0)
    chain = Chain([nn.Linear(4, 3), nn.Linear(4, 3)], (torch.randn(1, 4),))
    recipe = ProgressiveDistillationRecipe(ProgressiveDistillationConfig(steps_per_student=2))
    optimizer = torch.optim.SGD(chain.parameters(), lr=0.5)
    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    first = [p.detach().clone() for p in chain.students[0].parameters()]
    second = [p.detach().clone() for p in chain.students[1].parameters()]
    assert [recipe.step(chain, batch, optimizer)["student"] for _ in range(2)] == [1, 1]
    assert all(torch.equal(a, b) for a, b in zip(second, chain.students[1].parameters()))  # not yet trained
    trained = [p.detach().clone() for p in chain.students[0].parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, trained))
    assert [recipe.step(chain, batch, optimizer)["student"] for _ in range(3)] == [2, 2, 2]  # the last keeps on
    assert all(torch.equal(a, b) for a, b in zip(trained, chain.students[0].parameters()))  # frozen now


def test_bad_chains_are_refused():
    with pytest.raises(ValueError, match="must agree on their output"):
        Chain([nn.Linear(4, 3), nn.Linear(4, 5)], (torch.randn(1, 4),))
    with pytest.raises(ValueError, match="at least one student"):
        Chain([], (torch.randn(1, 4),))
    with pytest.raises(ValueError, match="k must lie in 1..1"):
        Chain([nn.Linear(4, 3)], (torch.randn(1, 4),)).prefix(2)
    with pytest.raises(ValueError, match="steps_per_student must be >= 1"):
        ProgressiveDistillationConfig(steps_per_student=0)
    with pytest.raises(TypeError, match="trains a Chain"):
        ProgressiveDistillationRecipe().step(nn.Linear(4, 3), (torch.randn(2, 4), torch.zeros(2, dtype=torch.long)),
                                             torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))
