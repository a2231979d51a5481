"""Which sub-models a training step visits.

>>> from onefit.space import Dimension, Space
>>> space = Space([Dimension("width:fc", "width", (8, 16)), Dimension("bits:fc", "bits", (4, 8, 32))])
>>> uniform_bits(space, 8)
{'width:fc': 16, 'bits:fc': 8}
>>> uniform_bits(space, 3, {"width:fc": 8, "bits:fc": 32})  # no 3-bit choice: the nearest above
{'width:fc': 8, 'bits:fc': 4}
"""

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
            # A family's bits dimensions all offer 32, so a choice at or above ``bits`` exists; a
            # hand-made space may lack one, and then lowering the layer would break the promise above.
            above = [b for b in dim.choices if b >= bits]  # choices are increasing: the first is the nearest
            if not above:
                raise ValueError(f"uniform_bits: {dim.name} offers no bit-width >= {bits} (choices {dim.choices})")
            arch[dim.name] = above[0]
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
        levels = sorted({b for dim in space if dim.kind == "bits" for b in dim.choices})
        return [space.max(), space.min()] + [self._random(space, rng, levels) for _ in range(self.n_random)]

    def _random(self, space: Space, rng: random.Random, levels: list[int]) -> Arch:
        arch = space.sample(rng)
        if self.bit_policy == "uniform" and levels:
            arch = uniform_bits(space, rng.choice(levels), arch)
        return arch


@dataclass(frozen=True)
class LadderSampler:
    """The largest and a fixed ladder of sub-models, every step: the few sizes a family is built to
    deploy (MatFormer, Flextron train a handful of nested granularities rather than random ones).
    Each sub-model of the ladder gets as many updates as the largest.

    >>> from onefit.space import Dimension, Space
    >>> space = Space([Dimension("width:fc", "width", (8, 16, 32))])
    >>> LadderSampler(({"width:fc": 8}, {"width:fc": 16}))(space, random.Random(0))
    [{'width:fc': 32}, {'width:fc': 8}, {'width:fc': 16}]
    """

    archs: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        if not self.archs:
            raise ValueError("LadderSampler needs the archs of its ladder, got none")

    def __call__(self, space: Space, rng: random.Random) -> list[Arch]:
        return [space.max()] + [space.complete(arch) for arch in self.archs]
