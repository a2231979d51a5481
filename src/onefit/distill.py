"""Distillation losses: how a student learns a teacher's outputs. Every recipe and task uses these.

- ``kl``: T²-scaled KL(teacher ‖ student) on temperature-softened logits (Hinton et al. 2015),
  over the last axis, averaged over every other position (samples, tokens);
- ``mse``: mean squared error between logits (N2N learning, Ashok et al. 2018);
- ``cosine``: 1 - cosine similarity per sample (embedding distillation, as for sentence encoders).

>>> import torch
>>> logits = torch.tensor([[2.0, 0.0, -1.0]])
>>> float(kl(logits, logits, 2.0)), float(mse(logits, logits)), round(float(cosine(logits, logits)), 6)
(0.0, 0.0, 0.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), summed over the last axis and averaged
    over the positions before it."""
    t = temperature
    s, p = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    return F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(p / t, -1), log_target=True, reduction="batchmean") * t * t


def mse(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error between the logits (``temperature`` is ignored)."""
    return F.mse_loss(student, teacher)


def cosine(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """1 - cosine similarity of each sample's flattened outputs, averaged (``temperature`` ignored)."""
    return 1.0 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1).mean()


LOSSES = {"kl": kl, "mse": mse, "cosine": cosine}


def loss(kind: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The distillation loss ``kind`` (one of ``LOSSES``)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown distillation loss {kind!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[kind](student, teacher, temperature)
