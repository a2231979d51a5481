"""Measured latency of a module on torch eager: warm-up, many repeats, median and p90."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def measure_latency(module: nn.Module, example: torch.Tensor, *, repeats: int = 50, warmup: int = 10) -> dict:
    """Wall-clock latency of ``module(example)`` in milliseconds, with the conditions recorded."""
    module.eval()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(example)
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(example)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "batch": int(example.shape[0]),
        "threads": torch.get_num_threads(),
        "backend": "torch-eager",
        "repeats": repeats,
    }
