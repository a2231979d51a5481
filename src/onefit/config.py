"""ElasticConfig: which choices each elastic dimension gets, with per-layer overrides.

>>> config = ElasticConfig(width=(0.5, 1.0), layers={"head*": (1.0,), "stages.1.*": (0.25, 0.5, 1.0)})
>>> config.width_choices(64, 1, ["stages.1.0.conv1"])
(16, 32, 64)
>>> config.width_choices(10, 1, ["head"])
(10,)
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Mapping, Sequence


def _fractions(values, where: str) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in values)
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if not fractions or bad:
        raise ValueError(f"{where}: width fractions must lie in (0, 1], got {list(fractions)}")
    return fractions


@dataclass(frozen=True)
class ElasticConfig:
    """width: fractions of each width group's full size (the full size is always included).
    heads: fractions of each attention's heads; None: the same as ``width``.
    depth: True: every skippable stage from its minimal depth to all its blocks; False: no depth
    dimensions; a tuple of ints: the depths allowed (those a stage can take, and always all blocks).
    layers: overrides as ``{pattern: fractions}``; a group takes the first pattern (``fnmatch``
    style) that matches one of the layers producing it; ``(1.0,)`` keeps it whole.
    """

    width: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    heads: tuple[float, ...] | None = None
    depth: bool | tuple[int, ...] = True
    layers: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _fractions(self.width, "ElasticConfig.width"))
        if self.heads is not None:
            object.__setattr__(self, "heads", _fractions(self.heads, "ElasticConfig.heads"))
        if not isinstance(self.depth, bool):
            depths = tuple(self.depth)
            if not depths or not all(isinstance(d, int) and d >= 1 for d in depths):
                raise ValueError(f"ElasticConfig.depth: True, False or positive block counts, got {self.depth!r}")
            object.__setattr__(self, "depth", depths)
        pairs = self.layers.items() if isinstance(self.layers, Mapping) else self.layers
        layers = tuple((str(p), _fractions(f, f"ElasticConfig.layers[{p!r}]")) for p, f in pairs)
        object.__setattr__(self, "layers", layers)

    def fractions_for(self, producers: Sequence[str], kind: str = "width") -> tuple[float, ...]:
        for pattern, fractions in self.layers:
            if any(fnmatchcase(name, pattern) for name in producers):
                return fractions
        return self.heads if kind == "heads" and self.heads is not None else self.width

    def width_choices(self, size: int, multiple: int, producers: Sequence[str] = (), kind: str = "width") -> tuple:
        fractions = self.fractions_for(producers, kind)
        widths = {max(multiple, round(f * size / multiple) * multiple) for f in fractions}
        return tuple(sorted(widths | {size}))

    def choices(self, size: int, multiple: int, producers: Sequence[str], kind: str) -> tuple[int, ...]:
        """Choices of a group's dimension: channels for ``width``, head counts for ``heads``."""
        widths = self.width_choices(size, multiple, producers, kind)
        return tuple(w // multiple for w in widths) if kind == "heads" else widths

    def depth_choices(self, min_depth: int, blocks: int) -> tuple[int, ...]:
        if self.depth is True:
            return tuple(range(min_depth, blocks + 1))
        allowed = () if self.depth is False else self.depth
        return tuple(sorted({d for d in allowed if min_depth <= d <= blocks} | {blocks}))

    def check_patterns(self, names: Sequence[str]) -> None:
        """Raise if an override pattern matches none of ``names`` (a typo would silently do nothing)."""
        for pattern, _ in self.layers:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"ElasticConfig.layers: pattern {pattern!r} matches no layer; layers are "
                                 f"{list(names)[:12]}{' ...' if len(names) > 12 else ''}")
