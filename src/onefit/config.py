"""ElasticConfig: which choices each elastic dimension gets, with per-layer overrides.

>>> config = ElasticConfig(width=(0.5, 1.0), layers={"head*": (1.0,), "stages.1.*": (0.25, 0.5, 1.0)})
>>> config.width_choices(64, 1, ["stages.1.0.conv1"])
(16, 32, 64)
>>> config.width_choices(10, 1, ["head"])
(10,)
>>> ElasticConfig(bits=(8, 4), bits_layers={"head": (8,)}).bits_choices("head")
(8, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Mapping, Sequence

from onefit.elastic.quant import BITS, FULL, check_bits


def _fractions(values, where: str, what: str = "width") -> tuple[float, ...]:
    try:
        if isinstance(values, str):
            raise TypeError
        fractions = tuple(float(f) for f in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a tuple of fractions in (0, 1], got {values!r}") from None
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if not fractions or bad:
        raise ValueError(f"{where}: {what} fractions must lie in (0, 1], got {list(fractions)}")
    return fractions


def _bits(values, where: str) -> tuple[int, ...]:
    """Allowed bit-widths, sorted, with full precision (32) always among them."""
    if isinstance(values, (int, str)) or not values:
        raise ValueError(f"{where}: a non-empty tuple of bit-widths from {BITS}, got {values!r}")
    return tuple(sorted({check_bits(b, where) for b in values} | {FULL}))


def _frozen(value):
    """Lists (as JSON brings them back) as tuples, recursively, so a config stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value


def _kernels(values) -> tuple[int, ...]:
    """Kernel sizes: odd integers >= 1, sorted."""
    if isinstance(values, (int, str)) or not values:
        raise ValueError(f"ElasticConfig.kernel: a non-empty tuple of odd kernel sizes such as (3, 5), got {values!r}")
    bad = [k for k in values if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0]
    if bad:
        raise ValueError(f"ElasticConfig.kernel: kernel sizes must be odd positive integers (1, 3, 5, 7, ...), "
                         f"got {list(bad)}")
    return tuple(sorted(set(values)))


def _pairs(value) -> tuple:
    """``{pattern: choices}`` or ``((pattern, choices), ...)`` (as JSON brings it back) as pairs."""
    return tuple(value.items() if isinstance(value, Mapping) else value)


@dataclass(frozen=True)
class ElasticConfig:
    """width: fractions of each width group's full size (the full size is always included).
    heads: fractions of each attention's heads; None: the same as ``width``.
    depth: True: every skippable stage from its minimal depth to all its blocks; False: no depth
    dimensions; a tuple of ints: the depths allowed (those a stage can take, and always all blocks).
    layers: overrides as ``{pattern: fractions}``; a group takes the first pattern (``fnmatch``
    style) that matches one of the layers producing it; ``(1.0,)`` keeps it whole.
    bits: weight bit-widths (from 2, 3, 4, 8, 32) of every Linear and convolution, each its own
    ``bits:<layer>`` dimension; 32 (full precision) is always a choice; None: no bits dimensions.
    bits_layers: overrides as ``{pattern: bit-widths}``, first match wins; ``(32,)`` keeps a layer
    in full precision, and an override gives a layer bits dimensions even when ``bits`` is None.
    bits_shared: one ``bits`` dimension for every layer with bit-width choices instead of one per
    layer: a sub-model is quantized as a whole or not at all, as a runtime deploys int8 (with
    ``bits=(8,)`` and ``activation_bits=8``, 8-bit quantization-aware training of every sub-model for
    ONNX Runtime's and OpenVINO's int8 scheme). Every such layer must offer the same bit-widths.
    activation_bits: None quantizes weights only; a bit-width (2 to 8) also fake-quantizes the
    input of every layer whose weights run below 32 bits, per tensor over a calibrated range
    (``onefit.elastic.quant.calibrate_``).
    reduce_range: 8-bit weights on ONNX Runtime's reduced range (levels -64..64, ``scale = max|w| /
    64``), the range of the int8 files it makes for x86 CPUs without VNNI
    (``onefit.runtimes.cpu.int8_weights``), so that training at 8 bits rounds the weights as those
    files will; False: the full range (-127..127), what CPUs with VNNI, AMX or ARM's dot product run.
    rank: fractions of the full rank min(out, in * kernel) of every Linear and plain convolution,
    each factorized as U V (``onefit.elastic.lowrank``) with its own ``rank:<layer>`` dimension; the
    full rank is always a choice; a layer whose smallest rank saves no parameters stays dense (the
    reason is in ``onefit.inspect``); None: no rank dimensions.
    rank_layers: overrides as ``{pattern: fractions}``, first match wins; ``(1.0,)`` keeps a layer
    dense, and an override gives a layer a rank dimension even when ``rank`` is None.
    kernel: smaller odd kernel sizes offered to every convolution with a larger square kernel
    (Once-for-All; ``onefit.dims.kernel``), e.g. ``(3, 5)`` for 7 x 7 layers; None: no kernel
    dimensions. kernel_layers: patterns of the layers that get them (default: every one).
    options: settings of dimension kinds registered from outside onefit, as ``{kind: value}``
    (JSON values); a kind reads its own with ``config.option(kind, default)``.
    uniform: one heads and one FFN-width dimension per transformer block list, shared by all its
    blocks, instead of one per block: the sub-models a transformers config can describe, so an
    extracted model saves with ``save_pretrained`` and reloads with ``from_pretrained``.
    hidden: fractions of a transformer decoder's hidden size (its residual stream: embedding
    columns, every norm, every projection reading or writing it, the head), one ``hidden:<blocks>``
    dimension (``onefit.graph.stream``); None: the hidden size stays whole.
    kv_heads: fractions of a grouped-query attention's key/value heads: whole groups, each with
    its query heads, as LLM-Pruner prunes them (one ``kv:<attention>`` dimension per attention);
    None: every key/value head is kept (Minitron's choice).
    """

    width: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    heads: tuple[float, ...] | None = None
    depth: bool | tuple[int, ...] = True
    layers: tuple[tuple[str, tuple[float, ...]], ...] = ()
    bits: tuple[int, ...] | None = None
    bits_layers: tuple[tuple[str, tuple[int, ...]], ...] = ()
    activation_bits: int | None = None
    bits_shared: bool = False
    reduce_range: bool = False
    rank: tuple[float, ...] | None = None
    rank_layers: tuple[tuple[str, tuple[float, ...]], ...] = ()
    kernel: tuple[int, ...] | None = None
    kernel_layers: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    uniform: bool = False
    hidden: tuple[float, ...] | None = None
    kv_heads: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", _fractions(self.width, "ElasticConfig.width"))
        if self.heads is not None:
            object.__setattr__(self, "heads", _fractions(self.heads, "ElasticConfig.heads"))
        if self.hidden is not None:
            object.__setattr__(self, "hidden", _fractions(self.hidden, "ElasticConfig.hidden"))
        if self.kv_heads is not None:
            object.__setattr__(self, "kv_heads", _fractions(self.kv_heads, "ElasticConfig.kv_heads"))
        if not isinstance(self.depth, bool):
            depths = tuple(self.depth)
            if not depths or not all(isinstance(d, int) and d >= 1 for d in depths):
                raise ValueError(f"ElasticConfig.depth: True, False or positive block counts, got {self.depth!r}")
            object.__setattr__(self, "depth", depths)
        layers = tuple((str(p), _fractions(f, f"ElasticConfig.layers[{p!r}]")) for p, f in _pairs(self.layers))
        object.__setattr__(self, "layers", layers)
        if self.bits is not None:
            object.__setattr__(self, "bits", _bits(self.bits, "ElasticConfig.bits"))
        overrides = tuple((str(p), _bits(b, f"ElasticConfig.bits_layers[{p!r}]"))
                          for p, b in _pairs(self.bits_layers))
        object.__setattr__(self, "bits_layers", overrides)
        if self.rank is not None:
            object.__setattr__(self, "rank", _fractions(self.rank, "ElasticConfig.rank", "rank"))
        ranks = tuple((str(p), _fractions(f, f"ElasticConfig.rank_layers[{p!r}]", "rank")) for p, f in _pairs(self.rank_layers))
        object.__setattr__(self, "rank_layers", ranks)
        object.__setattr__(self, "options", tuple((str(k), _frozen(v)) for k, v in _pairs(self.options)))
        if self.kernel is not None:
            object.__setattr__(self, "kernel", _kernels(self.kernel))
        if isinstance(self.kernel_layers, str):
            raise ValueError(f"ElasticConfig.kernel_layers: a tuple of layer patterns, got {self.kernel_layers!r}")
        object.__setattr__(self, "kernel_layers", tuple(str(p) for p in self.kernel_layers))
        if self.activation_bits is not None:
            self._check_activation_bits()
        if not isinstance(self.reduce_range, bool):
            raise ValueError(f"ElasticConfig.reduce_range: true or false, got {self.reduce_range!r}")
        if self.reduce_range and 8 not in self.weight_bits():
            raise ValueError("ElasticConfig.reduce_range: sets the range of 8-bit weights, and no layer offers 8 bits; "
                             "add 8 to bits or bits_layers")
        if self.bits_shared and self.bits is None and not self.bits_layers:
            raise ValueError("ElasticConfig.bits_shared: shares the bits dimension of layers with low-bit weights; "
                             "set bits or bits_layers too")

    def _check_activation_bits(self) -> None:
        where = "ElasticConfig.activation_bits"
        if check_bits(self.activation_bits, where) == FULL:
            raise ValueError(f"{where}: one of {BITS[:-1]}, or None for weights only, got {self.activation_bits!r}")
        if self.bits is None and not self.bits_layers:
            raise ValueError(f"{where}: quantizes the inputs of layers with low-bit weights; set bits or bits_layers too")

    def fractions_for(self, producers: Sequence[str], kind: str = "width") -> tuple[float, ...]:
        for pattern, fractions in self.layers:
            if any(fnmatchcase(name, pattern) for name in producers):
                return fractions
        if kind in ("hidden", "kv"):
            return self.hidden if kind == "hidden" else self.kv_heads
        return self.heads if kind == "heads" and self.heads is not None else self.width

    def width_choices(self, size: int, multiple: int, producers: Sequence[str] = (), kind: str = "width") -> tuple:
        fractions = self.fractions_for(producers, kind)
        widths = {max(multiple, round(f * size / multiple) * multiple) for f in fractions}
        return tuple(sorted(widths | {size}))

    def choices(self, size: int, multiple: int, producers: Sequence[str], kind: str) -> tuple[int, ...]:
        """Choices of a group's dimension: channels for ``width``, head counts for ``heads``."""
        widths = self.width_choices(size, multiple, producers, kind)
        return tuple(w // multiple for w in widths) if kind in ("heads", "kv") else widths

    def depth_choices(self, min_depth: int, blocks: int) -> tuple[int, ...]:
        if self.depth is True:
            return tuple(range(min_depth, blocks + 1))
        allowed = () if self.depth is False else self.depth
        return tuple(sorted({d for d in allowed if min_depth <= d <= blocks} | {blocks}))

    def weight_bits(self) -> set[int]:
        """Every weight bit-width some layer may take (32 always)."""
        return {FULL, *(self.bits or ()), *(b for _, bits in self.bits_layers for b in bits)}

    def bits_choices(self, layer: str) -> tuple[int, ...]:
        """Weight bit-widths of ``layer``: its first matching override, else ``bits``; (32,) if neither."""
        for pattern, bits in self.bits_layers:
            if fnmatchcase(layer, pattern):
                return bits
        return self.bits or (FULL,)

    def rank_fractions(self, layer: str) -> tuple[float, ...] | None:
        """Rank fractions of ``layer``: its first matching override, else ``rank``; None if neither."""
        return next((f for pattern, f in self.rank_layers if fnmatchcase(layer, pattern)), self.rank)

    def rank_choices(self, layer: str, full_rank: int) -> tuple[int, ...] | None:
        """Ranks of ``layer`` (``rank_fractions`` of its full rank), always with the full rank;
        None when no rank setting applies (the layer stays dense)."""
        fractions = self.rank_fractions(layer)
        if fractions is None:
            return None
        return tuple(sorted({max(1, round(f * full_rank)) for f in fractions} | {full_rank}))

    def kernel_allowed(self, layer: str) -> bool:
        """Whether ``layer`` may get a kernel dimension: every layer, or those ``kernel_layers`` matches."""
        return not self.kernel_layers or any(fnmatchcase(layer, p) for p in self.kernel_layers)

    def option(self, kind: str, default: Any = None) -> Any:
        """The ``options`` entry of dimension kind ``kind``, or ``default``."""
        return next((v for k, v in self.options if k == kind), default)

    def check_patterns(self, field: str, pairs, names: Sequence[str]) -> None:
        """Raise if a pattern of the override ``field`` (``pairs``) matches none of ``names``: a
        typo would silently do nothing. Each dimension kind checks its own field against the
        layers it can apply to (``layers``: every layer; ``bits_layers``: the quantizable ones;
        ``rank_layers``: the factorizable ones)."""
        for pattern, _ in pairs:
            if not any(fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"ElasticConfig.{field}: pattern {pattern!r} matches no layer; layers are "
                                 f"{list(names)[:12]}{' ...' if len(names) > 12 else ''}")
