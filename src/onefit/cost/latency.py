"""Measured latency on the runtime a model ships on: ONNX Runtime (default), torch eager, torch.compile.

Each measurement warms up, repeats, and reports the median and p90 with the conditions that
produced them (backend, batch, threads, repeats), so a figure never travels without its context.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BACKENDS = ("onnxruntime", "eager", "compile")


@dataclass
class Latency:
    median_ms: float
    p90_ms: float
    backend: str
    batch: int
    threads: int
    repeats: int
    efficiency: float | None = None  # achieved FLOP/s over this machine's peak, when the cost is known
    bound_ms: float | None = None  # the least time the roofline allows, when the cost is known

    def to_json(self) -> dict:
        return asdict(self)


def environment() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with contextlib.suppress(ImportError):
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``threads`` intra-op threads, then restore the previous count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _runner(target, examples: tuple, backend: str, threads: int) -> Callable[[], object]:
    if backend == "onnxruntime":
        from onefit.export.onnx import onnx_session, export

        if isinstance(target, nn.Module):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, "model.onnx")
                export(target, path, examples)
                session = onnx_session(path, threads)
        else:
            session = onnx_session(Path(target), threads)
        feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), examples)}
        return lambda: session.run(None, feeds)
    if not isinstance(target, nn.Module):
        raise TypeError(f"backend {backend!r} needs an nn.Module, got {type(target).__name__}")
    module = target.eval()
    if backend == "compile":
        module = torch.compile(module)
    return lambda: module(*examples)


def time_call(run: Callable[[], object], *, batch: int, backend: str, threads: int, repeats: int = 50,
              warmup: int = 10) -> Latency:
    """Median and 90th percentile of ``repeats`` calls of ``run`` after ``warmup`` calls: the
    timing every runtime shares (``onefit.runtimes`` times its own sessions with it)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return Latency(statistics.median(times), times[int(0.9 * (len(times) - 1))], backend, batch, threads, repeats)


def measure_latency(
    target: nn.Module | str | Path,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    backend: str = "onnxruntime",
    threads: int | None = None,
    repeats: int = 50,
    warmup: int = 10,
    cost: dict | None = None,
    int8: bool = False,
) -> Latency:
    """Latency of one forward pass of ``target`` (a module, or an ONNX file for onnxruntime) on
    ``example`` (a tensor or a tuple of input tensors).

    With ``cost`` (per-sample counts from ``onefit.costs``) the result also carries its efficiency
    against this machine's roofline (int8 peak with ``int8``) and the roofline's lower bound.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    threads = threads or torch.get_num_threads()
    examples = example if isinstance(example, tuple) else (example,)
    with torch_threads(threads), torch.inference_mode():
        run = _runner(target, examples, backend, threads)
        latency = time_call(run, batch=int(examples[0].shape[0]), backend=backend, threads=threads, repeats=repeats,
                            warmup=warmup)
    if cost is not None:
        from onefit.cost.roofline import machine_roofline

        roof = machine_roofline(threads)
        batch = latency.batch
        latency.efficiency = roof.efficiency(cost["macs"] * batch, latency.median_ms, int8=int8)
        latency.bound_ms = roof.bound_ms(cost["macs"] * batch, cost["weight_bytes"] + cost["activation_bytes"] * batch,
                                         int8=int8)
    return latency
