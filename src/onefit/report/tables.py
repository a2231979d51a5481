"""The front as a table a person reads at a glance (rich).

>>> spread(list(range(10)), 4)
[0, 3, 6, 9]
>>> _cell("error", 0.0123), _cell("params", 12345.0)
('1.2%', '12,345')
"""

from __future__ import annotations

COUNTS = ("params", "macs", "weight_bytes")


def _cell(name: str, value: float) -> str:
    if name == "error":
        return f"{100 * value:.1f}%"
    if name in COUNTS or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}"


def summarize(family, arch: dict) -> str:
    """A sub-model in a few characters: its depths and its mean width, e.g. ``d2+1 w50%``."""
    depths = [str(v) for k, v in arch.items() if k.startswith("depth:")]
    idle = family.idle(arch)  # widths inside skipped blocks say nothing about this sub-model
    fractions = [v / family.space[k].choices[-1] for k, v in arch.items() if k.startswith("width:") and k not in idle]
    width = 100 * sum(fractions) / max(len(fractions), 1)
    return f"d{'+'.join(depths) or '-'} w{width:.0f}%"


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced from first to last (the last alone when ``n`` is 1)."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[-1]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def front_table(front, title: str | None, summarize=None, limit: int = 20):
    """One row per arch on the front (an ``onefit.search.Front``; at most ``limit``, evenly spread),
    objectives first, then the other counts that were measured; ``summarize(arch) -> str`` gives
    the arch column."""
    from rich.table import Table

    measured = {n for t in front.trials for n in t.metrics}
    names = list(front.objectives) + [n for n in COUNTS if n not in front.objectives and n in measured]
    table = Table(title=title)
    table.add_column("#", justify="right")
    if summarize is not None:
        table.add_column("sub-model")
    for name in names:
        table.add_column(name, justify="right")
    for i, trial in enumerate(spread(front.trials, limit)):
        cells = [_cell(n, trial.metrics[n]) if n in trial.metrics else "" for n in names]
        table.add_row(str(i), *([summarize(trial.arch)] if summarize else []), *cells)
    return table
