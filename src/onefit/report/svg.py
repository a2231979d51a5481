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


def scatter_svg(series: list[dict], xlabel: str, ylabel: str, *, title: str = "", xlog: bool = False) -> str:
    """One scatter per ``{"label", "x", "y"}``; optional ``"names"`` annotate the points,
    ``"front"`` (one bool a point) joins the points on the front in order of x and draws the
    others hollow, ``"style"`` sets matplotlib's ``c`` and ``s`` and ``hollow`` (rings)."""
    fig, ax = _figure()
    for i, s in enumerate(series):
        style = s.get("style", {})
        color, size = style.get("c", f"C{i}"), style.get("s", 22)
        n = len(s["x"])
        points = sorted(zip(s["x"], s["y"], s.get("names") or [""] * n, s.get("front") or [True] * n))
        on = [p for p in points if p[3]]
        off = [p for p in points if not p[3]]
        face = "none" if style.get("hollow") else color
        ax.scatter([p[0] for p in on], [p[1] for p in on], label=s["label"], s=size, facecolors=face,
                   edgecolors=color, zorder=2 + i)
        if off:
            ax.scatter([p[0] for p in off], [p[1] for p in off], s=size, facecolors="none", edgecolors=color,
                       zorder=2 + i)
        if "front" in s and len(on) > 1:
            ax.step([p[0] for p in on], [p[1] for p in on], where="post", c=color, lw=1, alpha=0.7, zorder=1 + i)
        for x, y, name, _ in points:
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
