"""``onefit demo``: ``onefit run`` on the bundled example config (scikit-learn's digits, a small
ResNet), then the exported models and the searched front as tables in the terminal.

>>> config = example_config("digits", ["train.epochs=2"])
>>> config.model.zoo, config.train.epochs, "digits" in EXAMPLES
('resnet', 2, True)
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from onefit.run import RunFolder, load_config

EXAMPLES = {p.stem: Path(str(p)) for p in resources.files("onefit").joinpath("examples").iterdir()
            if p.name.endswith(".toml")}


def example_config(name: str, overrides: list[str] = ()):
    """The bundled example config ``name`` (``EXAMPLES``) with ``overrides`` (``section.key=value``)."""
    if name not in EXAMPLES:
        raise ValueError(f"no example config {name!r}; the examples are {sorted(EXAMPLES)}")
    return load_config(EXAMPLES[name], overrides)[0]


def print_summary(folder: RunFolder, family) -> None:
    """The exported models (one row per file) and the searched front, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    from onefit.report.tables import front_table, summarize
    from onefit.search import Front
    from onefit.search.base import Trial

    manifest = json.loads((folder.path / "models" / "manifest.json").read_text())
    table = Table(title=f"exported sub-models ({manifest['metric']} on the test data, of the file itself)")
    for col in ("model", "sub-model", "params", "MACs", "file", manifest["metric"], "ms b=1", "p90"):
        table.add_column(col, justify="left" if col in ("model", "sub-model", "file") else "right")
    for m in manifest["models"]:
        for f in m["files"]:
            lat = next((l for l in m["latency"] if (l["runtime"], l["precision"], l["batch"]) ==
                        (f["runtime"], f["precision"], 1)), None)
            table.add_row(m["name"], summarize(family, m["arch"]), f"{m['params']:,}", f"{m['macs']:,}", f["file"],
                          f"{f['metric']['onnx']:.2f}" if f.get("metric") else "",
                          f"{lat['median_ms']:.3f}" if lat else "", f"{lat['p90_ms']:.3f}" if lat else "")
    console = Console()
    console.print(table)
    data = json.loads((folder.path / "front.json").read_text())
    front = Front([Trial.from_json(t) for t in data["front"]], data["objectives"])
    console.print(f"{' x '.join(front.objectives)} front: {len(front)} of {data['evaluated']} evaluated sub-models "
                  "(validation error)")
    console.print(front_table(front, None, lambda arch: summarize(family, arch), limit=12))
