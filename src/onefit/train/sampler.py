"""Which sub-models a training step visits."""

from __future__ import annotations

import random
from dataclasses import dataclass

from onefit.space import Arch, Space


@dataclass(frozen=True)
class SandwichSampler:
    """The sandwich rule (BigNAS, Yu et al. 2020): the largest, the smallest and ``n_random``
    uniformly drawn sub-models. The largest comes first so it can teach the others in-place."""

    n_random: int = 2

    def __post_init__(self) -> None:
        if self.n_random < 0:
            raise ValueError(f"SandwichSampler.n_random must be >= 0, got {self.n_random}")

    def __call__(self, space: Space, rng: random.Random) -> list[Arch]:
        return [space.max(), space.min()] + [space.sample(rng) for _ in range(self.n_random)]
