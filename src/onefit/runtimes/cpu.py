"""What this CPU can do for int8, read from the machine (never assumed): the instruction sets that
matter to quantized inference, and the int8 weight range that is safe on them.

x86 without VNNI multiplies int8 with ``vpmaddubsw``, whose int16 sums overflow with full 8-bit
weights, so ONNX Runtime's guidance is 7-bit weights (``reduce_range``) there; VNNI (AVX512-VNNI,
AVX-VNNI, AMX) and ARM's dot-product instructions sum in int32 and run full 8-bit weights safely.

>>> int8_weights({"avx2", "avx512_vnni"})
(False, '8-bit weights: the CPU has avx512_vnni, which sums int8 products in int32')
>>> int8_weights({"avx2"})[0]
True
"""

from __future__ import annotations

import platform
from pathlib import Path

VNNI = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")  # the last: ARM's dot product (SDOT/UDOT)
SHOWN = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "sve")


def cpu_flags() -> set[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty when it says none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):  # x86, ARM
            return set(line.split(":", 1)[1].split())
    return set()


def int8_weights(flags: set[str] | None = None) -> tuple[bool, str]:
    """``(reduce_range, why)``: 7-bit weights unless the CPU sums int8 products in int32."""
    flags = cpu_flags() if flags is None else flags
    found = [f for f in VNNI if f in flags]
    if found:
        return False, f"8-bit weights: the CPU has {found[0]}, which sums int8 products in int32"
    if platform.machine().lower() in ("arm64", "aarch64") and not flags:
        return False, "8-bit weights: an ARM CPU (its int8 kernels sum in int32)"
    return True, ("7-bit weights: the CPU has no VNNI or dot-product instructions, and full 8-bit weights can "
                  "overflow the int16 sums of its int8 kernels")


def describe() -> dict:
    """The flags that matter here, and the int8 weight range chosen."""
    flags = cpu_flags()
    reduce_range, why = int8_weights(flags)
    return {"isa": [f for f in SHOWN if f in flags], "int8_reduce_range": reduce_range, "int8_weights": why}
