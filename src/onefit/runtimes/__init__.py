"""Target runtimes, one file each, registered by name: where an exported sub-model runs, how its
file is built and verified there, and how long it takes there (``onefit.runtimes.base``).
``cpu`` reads what this CPU offers int8.

>>> sorted(RUNTIMES)
['onnxruntime', 'openvino']
"""

from onefit.runtimes.base import RUNTIMES, Built, Runtime, RuntimeMissing, register_runtime, runtime
from onefit.runtimes import onnxruntime as _onnxruntime, openvino as _openvino  # noqa: F401  (registers them)

__all__ = ["RUNTIMES", "Built", "Runtime", "RuntimeMissing", "register_runtime", "runtime"]
