"""The Recipe protocol and its registry: a training method as a config plus its ``step``.

A recipe has a ``name``, a frozen ``config`` (its ``config_type``), a ``random.Random`` ``rng``
the loop checkpoints, and:

- ``step(target, batch, optimizer, *, task, teacher=None) -> dict``: one optimizer step; the dict
  holds at least ``loss_largest`` and ``loss_mean`` (floats) for the progress bar and history;
- ``describe() -> dict``: ``{"recipe": name, "config": {...}, ...}``, JSON; ``from_description``
  rebuilds the recipe from it (a run folder records it);
- ``state_dict()`` / ``load_state_dict(state)``: what a resumed run needs besides ``rng``;
- ``prepare(target) -> optimizer | None``: what the loop calls when no optimizer is given
  (None: Adam at 3e-3 over every parameter); ``train_mode``: the mode the target trains in;
  ``trains``: ``"family"`` (the default) or ``"module"`` (a plain module, e.g. an extracted one);
- ``cosine_span(target, step, total) -> (position, length)``: where ``step`` lies in the cosine
  the loop's schedule follows (the whole run by default; a recipe in phases restarts it per phase).

``onefit.train`` is the one loop over any recipe; ``tests/test_recipe_contract.py`` runs every
registered recipe through the same checks.

>>> {'differentiable_quantization', 'ordered_rank', 'plain', 'quantized_distillation', 'sortednet', 'trp'} <= set(RECIPES)
True
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import nn

RECIPES: dict[str, type] = {}


def register_recipe(cls: type) -> type:
    """Class decorator: make ``cls`` known by its ``name`` (``onefit.train.RECIPES``)."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be registered as a recipe")
    RECIPES[cls.name] = cls
    return cls


class Recipe:
    """Base class: defaults for the optional parts of the protocol."""

    name: ClassVar[str] = ""
    config_type: ClassVar[type | None] = None
    trains: ClassVar[str] = "family"  # or "module": what ``step`` takes as its target
    train_mode: bool = True
    rng: random.Random

    def describe(self) -> dict:
        config = getattr(self, "config", None)
        return {"recipe": self.name, "config": asdict(config) if config is not None else {}}

    @classmethod
    def from_description(cls, data: dict) -> "Recipe":
        """The recipe ``describe()`` recorded (its config; its sampler where it has one)."""
        kwargs: dict[str, Any] = {}
        if cls.config_type is not None:
            kwargs["config"] = cls.config_type(**_tuples(data.get("config", {})))
        if "sampler" in data:
            from onefit.train.sampler import SandwichSampler

            kwargs["sampler"] = SandwichSampler(**data["sampler"])
        return cls(**kwargs)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def prepare(self, target: nn.Module) -> torch.optim.Optimizer | None:
        return None

    def cosine_span(self, target, step: int, total: int) -> tuple[int, int]:
        return step, total

    def step(self, target, batch, optimizer: torch.optim.Optimizer, *, task=None, teacher=None) -> dict:
        raise NotImplementedError


def recipe_from(data: dict) -> Recipe:
    """Rebuild a registered recipe from its ``describe()``."""
    name = data.get("recipe") if isinstance(data, dict) else None
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name].from_description(data)


def _tuples(value):
    """JSON lists back as tuples (frozen configs hold tuples), recursively."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value
