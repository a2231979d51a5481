"""Search spaces: named dimensions with ordered choices, and archs as plain dicts.

An arch maps every dimension name to one of its choices, e.g.
``{"depth:layer1": 2, "width:stem": 16}``. It is plain JSON; ``Space.key`` gives a canonical
string for caching and storage.

>>> space = Space([Dimension("width:fc1", "width", (8, 16, 32)), Dimension("depth:blocks", "depth", (1, 2))])
>>> space.max()
{'width:fc1': 32, 'depth:blocks': 2}
>>> space.size
6
"""

from __future__ import annotations

import json
import math
import numbers
import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

Arch = dict[str, Any]

# Dimension kinds; a handler registered with onefit.dims.register_kind adds its own.
KINDS = ["width", "depth", "heads", "rank", "kernel", "bits"]


class ArchError(ValueError):
    """An arch that does not belong to its space."""


@dataclass(frozen=True)
class Dimension:
    """One elastic dimension: a name, a kind and its choices, ordered from smallest to largest."""

    name: str
    kind: str
    choices: tuple

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dimension {self.name!r}: kind {self.kind!r} is not one of {tuple(KINDS)}")
        if not self.choices:
            raise ValueError(f"dimension {self.name!r}: needs at least one choice")
        object.__setattr__(self, "choices", tuple(self.choices))
        if list(self.choices) != sorted(set(self.choices)):
            raise ValueError(
                f"dimension {self.name!r}: choices must be distinct and increasing, got {list(self.choices)}"
            )

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices, and of its kind of number: 4.0 and True are not
        4 (an integer of another type, such as numpy's, is)."""
        return any(value == c and _same_kind(value, c) for c in self.choices)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "choices": list(self.choices)}

    @classmethod
    def from_json(cls, data: Mapping) -> "Dimension":
        return cls(data["name"], data["kind"], tuple(data["choices"]))


def _same_kind(value: Any, choice: Any) -> bool:
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool)
    if isinstance(choice, numbers.Integral):
        return isinstance(value, numbers.Integral)
    return True


class Space:
    """An ordered set of dimensions. Iterates over its dimensions in order."""

    def __init__(self, dimensions: list[Dimension]):
        names = [d.name for d in dimensions]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"space has duplicated dimension names: {duplicated}")
        self._dims = {d.name: d for d in dimensions}

    def __iter__(self) -> Iterator[Dimension]:
        return iter(self._dims.values())

    def __len__(self) -> int:
        return len(self._dims)

    def __getitem__(self, name: str) -> Dimension:
        return self._dims[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        body = ", ".join(f"{d.name}={list(d.choices)}" for d in self)
        return f"Space({body})"

    @property
    def names(self) -> list[str]:
        return list(self._dims)

    @property
    def size(self) -> int:
        """Number of distinct archs."""
        return math.prod(len(d.choices) for d in self)

    def max(self) -> Arch:
        return {d.name: d.choices[-1] for d in self}

    def min(self) -> Arch:
        return {d.name: d.choices[0] for d in self}

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random arch; ``rng`` is a ``random.Random`` so runs are reproducible."""
        return {d.name: rng.choice(d.choices) for d in self}

    def validate(self, arch: Mapping[str, Any]) -> Arch:
        """Return ``arch`` as a plain dict in dimension order, or raise ``ArchError`` naming the problem."""
        if not isinstance(arch, Mapping):
            raise ArchError(f"an arch is a dict from dimension name to value, got {type(arch).__name__}")
        unknown = sorted(set(arch) - set(self._dims))
        if unknown:
            raise ArchError(f"unknown dimension(s) {unknown}; this space has {self.names}")
        missing = [n for n in self._dims if n not in arch]
        if missing:
            raise ArchError(f"arch is missing dimension(s) {missing}")
        for d in self:
            if not d.allows(arch[d.name]):
                value = arch[d.name]
                kind = f" ({type(value).__name__}, not {type(d.choices[0]).__name__})" if value in d.choices else ""
                raise ArchError(
                    f"dimension {d.name!r} ({d.kind}): value {value!r}{kind} is not allowed; "
                    f"allowed values are {list(d.choices)}"
                )
        # the choices themselves: plain Python values, whatever integer type was passed
        return {d.name: d.choices[d.choices.index(arch[d.name])] for d in self}

    def complete(self, partial: Mapping[str, Any]) -> Arch:
        """Fill the dimensions ``partial`` leaves out with their largest choice, then validate."""
        return self.validate({**self.max(), **partial})

    def key(self, arch: Mapping[str, Any]) -> str:
        """Canonical string of a valid arch (sorted JSON), for caching and storage."""
        return json.dumps(self.validate(arch), sort_keys=True, separators=(",", ":"))

    def nested_chain(self) -> list[Arch]:
        """Archs from ``min()`` to ``max()``, each one choice larger than the previous in one dimension.

        Every arch in the chain is nested in the next (SortedNet's total order), so the largest
        one under a budget is found without search. Dimensions grow evenly: the next to grow is
        the one least far along its own choices.
        """
        index = {d.name: 0 for d in self}
        chain = [self.min()]
        while True:
            growable = [d for d in self if index[d.name] < len(d.choices) - 1]
            if not growable:
                return chain
            dim = min(growable, key=lambda d: (index[d.name] + 1) / (len(d.choices) - 1))
            index[dim.name] += 1
            chain.append({d.name: d.choices[index[d.name]] for d in self})

    def to_json(self) -> list[dict]:
        return [d.to_json() for d in self]

    @classmethod
    def from_json(cls, data: list[Mapping]) -> "Space":
        return cls([Dimension.from_json(d) for d in data])
