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


@pytest.mark.parametrize("module", ["onefit.space", "onefit.family", "onefit.importance", "onefit.config", "onefit.trust",
                                    "onefit.train.rng", "onefit.zoo", "onefit.inspect"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
