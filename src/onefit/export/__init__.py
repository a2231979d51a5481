"""Export a module to a verified single-file ONNX, optionally int8."""

from onefit.export.onnx import ExportError, ExportReport, export, onnx_session, run_onnx

__all__ = ["ExportError", "ExportReport", "export", "onnx_session", "run_onnx"]
