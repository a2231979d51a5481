"""Tests for bugs planted on purpose that the suite once missed (issue 23): each fails on its bug.

1. in-place distillation where each student is its own teacher (``nested_backward``);
2. the two weights of the distillation mix swapped (quantized distillation, SortedNet), tested
   with a weight other than 0.5;
3. NSGA-II preferring the smallest crowding distance;
4. the export parity tolerance loosened: a module 10x the default tolerance off is refused.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import onefit
from onefit.search.nsga2 import crowding, survival_order
from onefit.train import QuantizedDistillationConfig, QuantizedDistillationRecipe, SortedNetConfig, uniform_bits
from onefit.train.sorted import nested_backward


def by_hand(student, teacher, y, a, t):
    """(1 - a) CE(y) + a T^2 KL(p_teacher^T || p_student^T), written out."""
    p = F.softmax(teacher / t, -1)
    kl = (p * (torch.log(p) - F.log_softmax(student / t, -1))).sum(-1).mean()
    return (1 - a) * F.cross_entropy(student, y) + a * t * t * kl


def family_and_batch(config=None):
    torch.manual_seed(0)
    family = onefit.elasticize(onefit.zoo.mlp(hidden=16, layers=2), (torch.randn(2, 1, 8, 8),),
                               config or onefit.ElasticConfig(width=(0.5, 1.0), depth=False))
    with torch.no_grad():  # weights far from the default init: sub-models' outputs differ clearly
        for p in family.parameters():
            p.normal_(0, 0.5)
    return family.eval(), (torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,)))


def test_inplace_distillation_teaches_every_student_the_largest_outputs():
    family, (x, y) = family_and_batch()
    largest, smallest = family.space.max(), family.space.min()
    config = SortedNetConfig(distill="inplace", distill_weight=0.3, temperature=3.0)
    losses = nested_backward(family, [largest, smallest], (x, y), config)
    with torch.no_grad():
        with family.activate(largest):
            teacher = family(x)
        with family.activate(smallest):
            student = family(x)
    assert losses[0] == pytest.approx(F.cross_entropy(teacher, y).item(), rel=1e-5)  # the largest: labels only
    assert losses[1] == pytest.approx(by_hand(student, teacher, y, 0.3, 3.0).item(), rel=1e-5)
    # its own teacher would make the KL term 0: the loss would be 0.7 CE, which it is not
    assert losses[1] != pytest.approx(0.7 * F.cross_entropy(student, y).item(), rel=1e-3)


def test_quantized_distillation_mixes_labels_and_teacher_with_the_configured_weights():
    config = onefit.ElasticConfig(width=(1.0,), depth=False, bits=(4,))
    family, (x, y) = family_and_batch(config)
    recipe = QuantizedDistillationRecipe(QuantizedDistillationConfig(bits=(4,), distill_weight=0.8, temperature=2.0,
                                                                     train_teacher=False))
    optimizer = torch.optim.SGD(family.parameters(), lr=0.0)  # lr 0: the step changes nothing
    out = recipe.step(family, (x, y), optimizer)
    with torch.no_grad():
        with family.activate(family.space.max()):
            teacher = family(x)
        with family.activate(uniform_bits(family.space, 4)):
            student = family(x)
    assert out["loss_mean"] == pytest.approx(by_hand(student, teacher, y, 0.8, 2.0).item(), rel=1e-5)
    swapped = 0.8 * F.cross_entropy(student, y) + 0.2 * (by_hand(student, teacher, y, 1.0, 2.0))
    assert out["loss_mean"] != pytest.approx(swapped.item(), rel=1e-3)


def test_crowding_and_survival_prefer_the_ends_and_isolated_points():
    # one front of five points on a line: the two ends, an isolated one, two clustered ones
    front = np.array([[0.0, 10.0], [1.0, 9.0], [1.1, 8.9], [6.0, 4.0], [10.0, 0.0]])
    distance = crowding(front)
    assert np.isinf(distance[[0, 4]]).all()
    assert distance[3] > distance[1] and distance[3] > distance[2]
    order = survival_order(front, np.zeros(len(front)))
    assert set(order[:2]) == {0, 4} and order[2] == 3  # the ends first, then the isolated middle point
    # a dominated point comes after the whole front, an infeasible one last
    values = np.vstack([front, [[11.0, 11.0]], [[0.0, 0.0]]])
    order = survival_order(values, np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert list(order[-2:]) == [5, 6]


class Off(nn.Module):
    """Exports a linear map, but PyTorch adds ``delta`` to every output."""

    def __init__(self, delta: float):
        super().__init__()
        self.fc, self.delta = nn.Linear(4, 3), delta
        self.exporting = True

    def forward(self, x):
        return self.fc(x) + (0.0 if self.exporting else self.delta)


def test_export_refuses_outputs_ten_times_the_tolerance_off(tmp_path, monkeypatch):
    from onefit.export import onnx as onnx_export

    def export_then_drift(module, examples, exporter):
        module.exporting = True
        out = real(module, examples, exporter)
        module.exporting = False
        return out

    real = onnx_export._export_fp32
    monkeypatch.setattr(onnx_export, "_export_fp32", export_then_drift)
    torch.manual_seed(0)
    with pytest.raises(onefit.ExportError, match="parity check failed"):
        onefit.export(Off(1e-3), tmp_path / "off.onnx", (torch.rand(2, 4) * 0.1,))  # 10 x atol 1e-4
    report = onefit.export(Off(1e-5), tmp_path / "near.onnx", (torch.rand(2, 4) * 0.1,))  # within it
    assert report.max_abs_error < 1e-4
