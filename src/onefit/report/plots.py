"""Pareto plots: one PNG per pair of objectives, every evaluated arch in grey, the front on top."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path


def _axes_scale(name: str) -> str:
    # counts span orders of magnitude across a family; errors and latencies read better linearly
    return "log" if name in ("params", "macs", "weight_bytes") else "linear"


def plot_front(front, directory) -> list[Path]:
    """Write ``front_<a>_<b>.png`` for every pair of objectives; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    done = [t for t in front.evaluated if not t.failed]
    paths = []
    for i, j in combinations(range(len(front.objectives)), 2):
        a, b = front.objectives[i], front.objectives[j]
        fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
        ax.scatter([t.values[i] for t in done], [t.values[j] for t in done], s=10, c="0.75",
                   label=f"evaluated ({len(done)})")
        # with three or more objectives a front seen in two of them is not a staircase: points only
        ax.scatter([t.values[i] for t in front], [t.values[j] for t in front], s=18, c="C3",
                   label=f"front ({len(front)})")
        ax.set(xlabel=a, ylabel=b, xscale=_axes_scale(a), yscale=_axes_scale(b))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"front_{a}_{b}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
