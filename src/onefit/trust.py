"""What onefit may import when a file names code: ``module:function`` import paths.

A run folder or a family folder records how to rebuild its model and data as ``module:function``
paths. Opening a folder someone sent you must not run code it names, so, as transformers does with
``trust_remote_code``, only onefit's own factories (the zoo's models and the bundled data sets)
are resolved from a file by default; any other path needs ``trust_code=True`` (``--trust-code``),
and onefit says what it is about to import before it imports it. A path given directly by the
caller (a CLI argument, a config the user wrote) is the caller's own choice and is imported as
asked: ``resolve(spec, trusted=True)``.

>>> resolve("onefit.zoo:mlp", what="model factory").__name__
'mlp'
>>> resolve("os:system", what="model factory")
Traceback (most recent call last):
...
onefit.trust.UntrustedCodeError: the model factory 'os:system' is not one of onefit's own factories; loading it would import and run that code. Pass the model yourself, or trust_code=True (--trust-code) if you trust where this file came from
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Callable


class UntrustedCodeError(ValueError):
    """A file names code to import that onefit will not run without being told to."""


def bundled(spec: str) -> bool:
    """Whether ``spec`` names one of onefit's own factories: ``onefit.zoo:NAME`` or ``onefit.data:NAME``."""
    module, _, name = spec.partition(":")
    if module == "onefit.zoo":
        from onefit.zoo import MODELS

        return name in MODELS
    if module == "onefit.data":
        from onefit.data import DATASETS

        return name in DATASETS
    return False


def resolve(spec: str, *, what: str = "factory", trusted: bool = False) -> Callable:
    """The callable ``spec`` (``module:function``) names. onefit's own factories come from their
    registries, importing nothing else; any other is imported only when ``trusted``, and a
    warning names it first."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"the {what} must be an import path module:function, got {spec!r}")
    if bundled(spec):
        from onefit.data import DATASETS
        from onefit.zoo import MODELS

        module, _, name = spec.partition(":")
        return (MODELS if module == "onefit.zoo" else DATASETS)[name]
    if not trusted:
        raise UntrustedCodeError(
            f"the {what} {spec!r} is not one of onefit's own factories; loading it would import and run that "
            "code. Pass the model yourself, or trust_code=True (--trust-code) if you trust where this file "
            "came from")
    warnings.warn(f"importing and running the {what} {spec!r}", stacklevel=2)
    return import_path(spec, what)


def import_path(spec: str, what: str = "factory") -> Callable:
    """Import ``module:function``, the working directory on the import path as with ``python -m``
    (a console script does not have it), so ``mymodels:build`` finds ``./mymodels.py``. It goes
    last, so a folder's files never shadow an installed package."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"the {what} must be an import path module:function, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import the {what} {spec!r}: {err}") from err
