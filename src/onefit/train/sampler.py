"""Which sub-models a training step visits."""

from __future__ import annotations

import random
from dataclasses import dataclass

from onefit.space import Arch, Space

BIT_POLICIES = ("per_layer", "uniform")


def uniform_bits(space: Space, bits: int, arch: Arch | None = None) -> Arch:
    """``arch`` (default: the largest) with every bits dimension at ``bits``, or, where a layer
    cannot take ``bits``, at its nearest choice above (never below: precision is not lost silently)."""
    arch = dict(space.max() if arch is None else arch)
    for dim in space:
        if dim.kind == "bits":
            arch[dim.name] = next((b for b in dim.choices if b >= bits), dim.choices[-1])
    return arch


@dataclass(frozen=True)
class SandwichSampler:
    """The sandwich rule (BigNAS, Yu et al. 2020): the largest, the smallest and ``n_random``
    uniformly drawn sub-models. The largest comes first so it can teach the others in-place;
    with bits dimensions it is the full-precision model and the smallest runs at the lowest bits.

    bit_policy: "per_layer" draws each layer's bit-width on its own; "uniform" draws one
    bit-width per random sub-model and gives it to every layer (``uniform_bits``), so a step sees
    whole low-bit models rather than mixtures in which one full-precision layer hides the rest.
    """

    n_random: int = 2
    bit_policy: str = "per_layer"

    def __post_init__(self) -> None:
        if self.n_random < 0:
            raise ValueError(f"SandwichSampler.n_random must be >= 0, got {self.n_random}")
        if self.bit_policy not in BIT_POLICIES:
            raise ValueError(f"SandwichSampler.bit_policy: {self.bit_policy!r} is not one of {BIT_POLICIES}")

    def __call__(self, space: Space, rng: random.Random) -> list[Arch]:
        return [space.max(), space.min()] + [self._random(space, rng) for _ in range(self.n_random)]

    def _random(self, space: Space, rng: random.Random) -> Arch:
        arch = space.sample(rng)
        levels = sorted({b for dim in space if dim.kind == "bits" for b in dim.choices})
        if self.bit_policy == "uniform" and levels:
            arch = uniform_bits(space, rng.choice(levels), arch)
        return arch
