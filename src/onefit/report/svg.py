"""Plots as SVG text to put inline in a page: matplotlib draws, nothing is written to disk.

>>> svg = scatter_svg([{"label": "a", "x": [1, 2], "y": [3, 4]}], "x", "y", title="t")
>>> svg.startswith("<svg") and "</svg>" in svg
True
"""

from __future__ import annotations

import io
import re


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # no date: the same figures, the same text
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # an RDF licence block: nothing to show
    return text[text.index("<svg"):]  # drop the XML prolog and doctype, which may not sit inside HTML


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, and searchable in the page
    return plt.subplots(figsize=(5.6, 3.9), dpi=100)


def scatter_svg(series: list[dict], xlabel: str, ylabel: str, *, title: str = "", xlog: bool = False,
                connect: bool = False) -> str:
    """One scatter per ``{"label", "x", "y"}`` (optional ``"names"`` to annotate points);
    ``connect`` joins each series' points in order of x, as a front's staircase."""
    fig, ax = _figure()
    for i, s in enumerate(series):
        style = s.get("style", {})
        points = sorted(zip(s["x"], s["y"], s.get("names") or [""] * len(s["x"])))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.scatter(xs, ys, label=s["label"], s=style.get("s", 22), c=style.get("c", f"C{i}"), zorder=2 + i)
        if connect and len(xs) > 1:
            ax.plot(xs, ys, c=style.get("c", f"C{i}"), lw=1, alpha=0.6, zorder=1 + i)
        for x, y, name in points:
            if name:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xscale="log" if xlog else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig)


def curves_svg(curves: list[dict], xlabel: str, ylabel: str, *, title: str = "") -> str:
    """One line per ``{"label", "x", "y"}``."""
    fig, ax = _figure()
    for s in curves:
        ax.plot(s["x"], s["y"], marker="o", ms=3, label=s["label"])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _svg(fig)
