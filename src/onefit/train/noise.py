"""Annealed Gaussian gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise Improves
Learning for Very Deep Networks"): before each optimizer step, every gradient gets noise drawn
from N(0, eta / (1 + t)^0.55), t the step. The paper tries eta in {0.01, 0.3, 1.0}.

It wraps the optimizer, so no recipe needs to know: ``train(..., gradient_noise=0.01)``.

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(3))
>>> noisy = GradientNoise(torch.optim.SGD([w], lr=1.0), eta=1.0, seed=0)
>>> w.grad = torch.zeros(3)
>>> noisy.step()
>>> bool(w.abs().sum() > 0), noisy.t
(True, 1)
"""

from __future__ import annotations

import math

import torch

from onefit.train.rng import text_to_tensor, tensor_to_text


class GradientNoise:
    """``optimizer`` whose ``step`` first adds the annealed noise; everything else is the optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, eta: float, seed: int = 0, gamma: float = 0.55):
        if eta <= 0:
            raise ValueError(f"gradient_noise: eta must be > 0 (the paper uses 0.01, 0.3, 1.0), got {eta}")
        self.optimizer, self.eta, self.gamma, self.t = optimizer, eta, gamma, 0
        self.generator = torch.Generator().manual_seed(seed)  # its own: the run's other draws stay the same

    def step(self, closure=None):
        std = math.sqrt(self.eta / (1 + self.t) ** self.gamma)
        with torch.no_grad():
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        noise = torch.randn(p.grad.shape, generator=self.generator, dtype=p.grad.dtype)
                        p.grad.add_(noise.to(p.grad.device), alpha=std)
        self.t += 1
        return self.optimizer.step(closure)

    def state_dict(self) -> dict:
        return {"t": self.t, "generator": tensor_to_text(self.generator.get_state())}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.generator.set_state(text_to_tensor(state["generator"]))

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)  # param_groups, zero_grad, state, ...
