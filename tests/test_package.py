"""Package-level promises: light import, and every docstring example runs."""

import doctest
import importlib
import subprocess
import sys

import pytest


def test_import_onefit_stays_light():
    code = ("import sys, onefit; heavy = [m for m in ('onnx', 'onnxruntime', 'optuna', 'transformers', "
            "'matplotlib', 'sklearn', 'moocore', 'rich', 'typer') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _modules() -> list[str]:
    import pkgutil

    import onefit

    return sorted(m.name for m in pkgutil.walk_packages(onefit.__path__, "onefit.") if not m.name.endswith("__main__"))


# Modules that still have no example: the list may only shrink (a new module brings its examples).
WITHOUT_EXAMPLES = {
    "onefit.cli", "onefit.cost", "onefit.cost.latency", "onefit.cost.roofline", "onefit.data",
    "onefit.dims", "onefit.elastic", "onefit.elastic.attention",
    "onefit.elastic.depth", "onefit.elastic.hf_conv1d",
    "onefit.export", "onefit.graph",
    "onefit.graph.attention", "onefit.graph.stages",
 "onefit.report", "onefit.report.plots",
    "onefit.search", "onefit.search.family_problem", "onefit.search.mcts", "onefit.search.n2n",
    "onefit.search.predictor", "onefit.train",
    "onefit.zoo.convnext", "onefit.zoo.encoder", "onefit.zoo.minilm",
    "onefit.zoo.mlp", "onefit.zoo.mobile", "onefit.zoo.temporal", "onefit.zoo.vit",
}


@pytest.mark.parametrize("module", _modules())
def test_every_modules_examples_run(module):
    mod = importlib.import_module(module)
    examples = [t for t in doctest.DocTestFinder().find(mod) if t.examples]
    if module in WITHOUT_EXAMPLES:
        assert not examples, f"{module} has examples now: take it off WITHOUT_EXAMPLES"
        return
    assert examples, f"{module} has no example; give its public names a short one (a doctest)"
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_no_example_is_skipped():
    from pathlib import Path

    import onefit

    skipped = [str(p) for p in Path(onefit.__file__).parent.rglob("*.py") if "+SKIP" in p.read_text()]
    assert not skipped, f"examples marked +SKIP never run: {skipped}"


# Packages and top-level modules, lowest first: each may import only those before it.
ORDER = ["space", "progress", "distill", "zoo", "data", "trust", "elastic", "graph", "config", "checkpoint", "dims",
         "family", "tasks", "importance", "export", "cost", "runtimes", "streaming", "adapters", "saved", "train", "select", "search",
         "report",
         "inspect", "run", "demo", "cli", "__main__"]


def _imports():
    """(importing unit, imported unit, imported names) for every onefit import in src, lazy ones too."""
    import ast
    from pathlib import Path

    import onefit

    root = Path(onefit.__file__).parent
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("").parts
        me = rel[0] if rel[0] != "__init__" else None
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onefit."):
                yield me, node.module.split(".")[1], [a.name for a in node.names], node.module
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("onefit."):
                        yield me, alias.name.split(".")[1], [], alias.name


def test_packages_import_only_those_below_them_and_no_private_names():
    rank = {name: i for i, name in enumerate(ORDER)}
    upward, private = [], []
    for me, other, names, module in _imports():
        if me is None or me == other:
            continue  # onefit/__init__ gathers the public names; a package may import itself
        assert me in rank and other in rank, f"{me} or {other} is missing from ORDER"
        if rank[other] > rank[me]:
            upward.append(f"{me} imports {module}")
        private += [f"{me} imports {module}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not upward, upward
    assert not private, private
