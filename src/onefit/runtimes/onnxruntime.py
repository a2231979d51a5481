"""ONNX Runtime: fp32, and int8 as static QDQ (convolutional models) or dynamic (Linear-only),
both verified by ``onefit.export``.

>>> OnnxRuntime().missing() is None
True
"""

from __future__ import annotations

from pathlib import Path

from onefit.runtimes.base import Built, Runtime, register_runtime


@register_runtime
class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def build(self, module, target: Path, precision: str, *, examples, calibration=None, eval_data=None, task=None,
              reduce_range: bool = True, bits=None) -> Built:
        from onefit.export import export

        path = target.with_suffix(".onnx")
        report = export(module, path, examples, quantize="int8" if precision == "int8" else None,
                        calibration=calibration, eval_data=eval_data, task=task, reduce_range=reduce_range,
                        bits=bits if precision == "int8" else None)
        return Built(path, [path], precision, report.method, report.max_abs_error, report.cosine,
                     report.parity_inputs, report.accuracy)

    def session(self, path: Path, threads: int | None = None):
        from onefit.export import onnx_session

        return onnx_session(Path(path), threads)
