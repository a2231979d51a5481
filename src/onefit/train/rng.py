"""Every random state that shapes a training run, as JSON, so a resumed run is the same run.

A run killed after epoch k and resumed must compute what the uninterrupted run computes: the
same batches in the same order (the shuffling loader's generator, or torch's global generator
when the loader has none), the same sub-models (the recipe's ``rng``), the same dropout masks
(torch's global generator) and whatever user code draws from Python's and numpy's global ones.

>>> import random, torch
>>> recipe = type("Recipe", (), {"rng": random.Random(0)})()
>>> state = capture(recipe, data=None)
>>> first = (recipe.rng.random(), torch.rand(1).item())
>>> restore(state, recipe, data=None)
>>> (recipe.rng.random(), torch.rand(1).item()) == first
True
"""

from __future__ import annotations

import base64
import random

import numpy as np
import torch


def tensor_to_text(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def text_to_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def loader_generators(data) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects a DataLoader (its sampler, its batch sampler's
    sampler) draws its order from, in a fixed order."""
    holders = [data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)]
    found: list[torch.Generator] = []
    for holder in holders:
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def capture(recipe, data) -> dict:
    """The state of the recipe's rng, the loader's generators and the global generators."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "recipe": list(recipe.rng.getstate()),
        "python": list(random.getstate()),
        "torch": tensor_to_text(torch.get_rng_state()),
        "numpy": [kind, base64.b64encode(keys.astype(np.uint32).tobytes()).decode(), int(pos), int(has_gauss),
                  float(gauss)],
        "loader": [tensor_to_text(g.get_state()) for g in loader_generators(data)],
    }


def restore(state: dict, recipe, data) -> None:
    """Put back what ``capture`` saved; a loader that draws from another number of generators
    than the one saved is refused, since its order would differ."""
    recipe.rng.setstate(as_tuple(state["recipe"]))
    random.setstate(as_tuple(state["python"]))
    torch.set_rng_state(text_to_tensor(state["torch"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.frombuffer(base64.b64decode(keys), dtype=np.uint32), pos, has_gauss, gauss))
    generators = loader_generators(data)
    if len(generators) != len(state["loader"]):
        raise ValueError(f"the data draws its order from {len(generators)} generator(s), the checkpoint saved "
                         f"{len(state['loader'])}: resume with the same kind of loader")
    for generator, saved in zip(generators, state["loader"]):
        generator.set_state(text_to_tensor(saved))


def as_tuple(state) -> tuple:
    # JSON turns random.getstate()'s tuples into lists; random wants them back as tuples.
    version, internal, gauss = state
    return version, tuple(internal), gauss
