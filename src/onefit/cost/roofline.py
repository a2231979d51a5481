"""This machine's roofline: sustained fp32 and int8 multiply-add rates and memory bandwidth.

Measured once per machine and thread count, cached as JSON (``$ONEFIT_CACHE`` or
``~/.cache/onefit``). With it every latency gets an efficiency (achieved FLOP/s over peak) and
the lower bound the hardware allows (Williams et al. 2009): a pass cannot be faster than its
FLOPs at peak rate, nor than its bytes at full bandwidth.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from onefit.cost.latency import environment


@dataclass(frozen=True)
class Roofline:
    fp32_gflops: float  # sustained, 2 FLOPs per multiply-add (best of torch and ONNX Runtime GEMMs)
    int8_gops: float | None  # sustained int8 multiply-adds x 2, None where neither library has an int8 GEMM
    bandwidth_gbs: float  # sustained memory copy bandwidth (read + write bytes)
    threads: int

    def bound_ms(self, macs: int, bytes_moved: int, int8: bool = False) -> float:
        """The least time the hardware allows for ``macs`` multiply-adds and ``bytes_moved`` bytes."""
        peak = (self.int8_gops or self.fp32_gflops) if int8 else self.fp32_gflops
        return max(2 * macs / (peak * 1e9), bytes_moved / (self.bandwidth_gbs * 1e9)) * 1e3

    def efficiency(self, macs: int, latency_ms: float, int8: bool = False) -> float:
        """Achieved FLOP/s over peak FLOP/s."""
        peak = (self.int8_gops or self.fp32_gflops) if int8 else self.fp32_gflops
        return 2 * macs / (latency_ms * 1e-3) / (peak * 1e9)


def _best_rate(fn, work: float, seconds: float) -> float:
    fn()  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = max(best, work / (time.perf_counter() - t0))
    return best


def _onnxruntime_matmul_rate(n: int, threads: int, seconds: float, int8: bool = False) -> float:
    """(FL)OP/s of one n x n x n MatMul in ONNX Runtime, whose kernels can beat torch's on a CPU;
    ``int8``: MatMulInteger of u8 by s8, the product an int8 QDQ model runs."""
    try:
        import numpy as np
        from onnx import TensorProto, helper

        from onefit.export.onnx import onnx_session
    except ImportError:
        return 0.0
    if int8:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        types, out = (TensorProto.UINT8, TensorProto.INT8), TensorProto.INT32
        feeds = {"a": np.random.randint(0, 256, (n, n)).astype(np.uint8),
                 "b": np.random.randint(-128, 128, (n, n)).astype(np.int8)}
    else:
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        types, out = (TensorProto.FLOAT, TensorProto.FLOAT), TensorProto.FLOAT
        feeds = {x: np.random.rand(n, n).astype(np.float32) for x in "ab"}
    graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info(x, t, [n, n]) for x, t in zip("ab", types)],
                              [helper.make_tensor_value_info("c", out, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = onnx_session(model.SerializeToString(), threads)
    return _best_rate(lambda: session.run(None, feeds), 2 * n**3, seconds)


def measure_roofline(threads: int | None = None, seconds: float = 0.5) -> Roofline:
    """Peak rates as the best of torch and ONNX Runtime GEMMs, fp32 and int8."""
    threads = threads or torch.get_num_threads()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        n = 1024
        a, b = torch.randn(n, n), torch.randn(n, n)
        # Cache-sized GEMMs run fastest; take the best of a few sizes and both libraries.
        fp32 = max(_best_rate(lambda: torch.mm(a, b), 2 * n**3, seconds),
                   *(_onnxruntime_matmul_rate(m, threads, seconds / 2) for m in (256, 512, 1024))) / 1e9
        # torch's int8 GEMM has no fast CPU kernel on some machines (2 GOP/s on an AMD EPYC, where
        # ONNX Runtime's MatMulInteger runs the int8 models): the best of both, as for fp32.
        try:
            qa = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            qb = torch.randint(-128, 127, (n, n), dtype=torch.int8)
            int8 = _best_rate(lambda: torch._int_mm(qa, qb), 2 * n**3, seconds)
        except (RuntimeError, AttributeError):
            int8 = 0.0
        int8 = max(int8, *(_onnxruntime_matmul_rate(m, threads, seconds / 2, int8=True) for m in (256, 512, 1024)))
        int8 = int8 / 1e9 or None
        src = torch.empty(64 * 2**20 // 4)  # 64 MiB, far beyond the caches
        dst = torch.empty_like(src)
        bandwidth = _best_rate(lambda: dst.copy_(src), 2 * src.numel() * 4, seconds) / 1e9
    finally:
        torch.set_num_threads(saved)
    return Roofline(round(fp32, 2), None if int8 is None else round(int8, 2), round(bandwidth, 2), threads)


def _cache_path(threads: int) -> Path:
    env = environment()
    # v2: int8 peak is the best of torch and ONNX Runtime (v1 measured torch alone)
    key = hashlib.sha256(f"v2|{env['cpu']}|{env['cores']}|{env['torch']}|{threads}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("ONEFIT_CACHE", Path.home() / ".cache" / "onefit"))
    return root / f"roofline-{key}.json"


def machine_roofline(threads: int | None = None, refresh: bool = False) -> Roofline:
    """This machine's roofline for ``threads`` threads, measured once and then read from the cache."""
    threads = threads or torch.get_num_threads()
    path = _cache_path(threads)
    if path.exists() and not refresh:
        try:
            return Roofline(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # a damaged cache is measured again
    result = measure_roofline(threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    from onefit.checkpoint import atomic_write

    atomic_write(path, json.dumps(asdict(result)).encode())
    return result
