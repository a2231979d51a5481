"""The Runtime protocol and its registry: where an exported sub-model runs.

A runtime has a ``name``, the ``precisions`` it builds (``fp32``, ``int8``), ``missing()`` (why it
cannot run on this machine, or None), and:

- ``build(module, target, precision, *, examples, calibration, eval_data, task, reduce_range)``:
  write the file(s) for ``module`` at ``target`` (a path without suffix), verified against PyTorch
  on inputs other than the example and scored with the task's metric on ``eval_data``; returns a
  ``Built``;
- ``session(path, threads)``: an object with ``get_inputs()`` and ``run(None, feeds)``, as ONNX
  Runtime's, so parity and the metric are computed the same way on every runtime;
- ``latency(path, inputs, threads, repeats)``: a ``Latency`` measured on this runtime.

>>> sorted(RUNTIMES)
['onnxruntime', 'openvino']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

RUNTIMES: dict[str, type] = {}


class RuntimeMissing(RuntimeError):
    """A runtime that is not installed (or cannot run) here; the message says how to get it."""


def register_runtime(cls: type) -> type:
    RUNTIMES[cls.name] = cls
    return cls


def runtime(name: str) -> "Runtime":
    """The registered runtime ``name``, checked to run here."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {sorted(RUNTIMES)}")
    found = RUNTIMES[name]()
    why = found.missing()
    if why:
        raise RuntimeMissing(f"the runtime {name!r} cannot run here: {why}")
    return found


@dataclass
class Built:
    """A file built for a runtime, and what its checks found."""

    path: Path  # the file to load (an .onnx, or OpenVINO's .xml beside its .bin)
    files: list[Path]  # every file written
    precision: str
    method: str  # how it was made, e.g. "fp32", "static-qdq", "nncf-ptq"
    max_abs_error: float
    cosine: float
    parity_inputs: list = field(default_factory=list)
    metric: dict | None = None  # {"metric", "torch", "onnx" (this file), "change"}


class Runtime:
    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "int8")

    def missing(self) -> str | None:
        return None

    def build(self, module, target: Path, precision: str, **kwargs) -> Built:
        raise NotImplementedError

    def session(self, path: Path, threads: int | None = None):
        raise NotImplementedError

    def latency(self, path: Path, inputs: tuple, *, threads: int, repeats: int, warmup: int = 5):
        from onefit.cost.latency import time_call

        session = self.session(path, threads)
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        return time_call(lambda: session.run(None, feeds), batch=int(inputs[0].shape[0]), backend=self.name,
                         threads=threads, repeats=repeats, warmup=warmup)
