"""Tasks: each one's batch check, loss and metric, and a family trained on each through one loop."""

import math

import pytest
import torch
from torch import nn

import onefit
from onefit.tasks import (TASKS, ClassificationTask, DataError, DensePredictionTask, DistillationTask,
                          LanguageModelingTask, evaluate)


class TinyLM(nn.Module):
    def __init__(self, vocab=12, width=16):
        super().__init__()
        self.embed, self.mix, self.out = nn.Embedding(vocab, width), nn.Linear(width, width), nn.Linear(width, vocab)

    def forward(self, ids):  # (B, T) -> (B, T, vocab)
        return self.out(torch.relu(self.mix(self.embed(ids))))


class TinySegmenter(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, classes, 1)

    def forward(self, x):  # (B, 1, H, W) -> (B, classes, H, W)
        return self.head(torch.relu(self.conv(x)))


def _train_and_measure(model, example, data, task, epochs=15, lr=1e-2):
    family = onefit.elasticize(model, example, onefit.ElasticConfig(width=(0.5, 1.0), depth=False))
    before = evaluate(family, data, task)
    onefit.train(family, data, onefit.SortedNetRecipe(), epochs=epochs, task=task, progress=False,
                 optimizer=torch.optim.Adam(family.parameters(), lr=lr))
    return before, evaluate(family, data, task), family


def test_language_modelling_learns_a_repeating_sequence():
    torch.manual_seed(0)
    ids = torch.arange(12).repeat(4, 2)[:, :16]  # (4, 16): token t is followed by t + 1 (mod 12)
    task = LanguageModelingTask()
    before, after, family = _train_and_measure(TinyLM(), (ids[:1],), [ids] * 4, task)
    assert before > 8 and after < 0.5 * before  # perplexity: 12 tokens, uniform is 12
    assert family.history[-1]["task"] == "language_modeling"
    assert task.error(after) == pytest.approx(math.log(after))
    with pytest.raises(DataError, match="vocabulary has 12"):
        onefit.train(family, [ids + 20], epochs=1, task=task, progress=False)
    with pytest.raises(DataError, match="language_modeling task needs token ids"):
        onefit.train(family, [ids.float()], epochs=1, task=task, progress=False)


def test_dense_prediction_learns_a_mask_and_reports_mean_iou():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 6, 6)
    mask = (x[:, 0] > 0.66).long() + (x[:, 0] > 0.33).long()  # three classes by brightness
    task = DensePredictionTask()
    before, after, _ = _train_and_measure(TinySegmenter(), (x[:1],), [(x, mask)] * 4, task, epochs=80)
    assert after > before and after > 60
    with pytest.raises(DataError, match="masks"):
        task.check((x, mask.float()), (x[:1],), 3)
    with pytest.raises(DataError, match="model has 3"):
        task.check((x, mask + 3), (x[:1],), 3)


def test_distillation_without_labels_learns_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = [torch.randn(32, 6) for _ in range(4)]
    task = DistillationTask(teacher, kind="kl", temperature=2.0)
    student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    before, after, _ = _train_and_measure(student, (x[0][:1],), x, task, epochs=80)
    assert after > before + 50 and after >= 80  # agreement with the teacher, in percent (chance: 25)
    cosine = DistillationTask(teacher, kind="cosine")
    assert evaluate(teacher, x, cosine) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not one of"):
        DistillationTask(teacher, kind="l1")


def test_a_language_model_family_learns_its_teachers_next_token_distributions_token_by_token():
    torch.manual_seed(0)
    teacher = TinyLM().eval()
    ids = [torch.randint(0, 12, (8, 10)) for _ in range(4)]
    task = DistillationTask(teacher, kind="kl", temperature=2.0)  # (B, T, V) logits: a distribution per token
    with torch.no_grad():
        assert task.loss(teacher(ids[0]), ids[0]).item() == pytest.approx(0.0, abs=1e-6)
    before, after, _ = _train_and_measure(TinyLM(), (ids[0][:1],), ids, task, epochs=40)
    assert after > before + 30  # agreement with the teacher's next tokens, in percent


def test_classification_names_the_format_it_expects():
    task = ClassificationTask()
    with pytest.raises(DataError, match=r"\(inputs, labels\) pairs"):
        task.check(torch.randn(2, 4), (torch.randn(1, 4),))
    assert set(TASKS) == {"classification", "dense", "distillation", "language_modeling"}


def test_export_reports_the_tasks_metric_of_the_file(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (3, 8))
    report = onefit.export(TinyLM().eval(), tmp_path / "lm.onnx", (ids[:1],), eval_data=[ids],
                           task=LanguageModelingTask())
    assert report.accuracy["metric"] == "perplexity" and abs(report.accuracy["change"]) < 1e-3
