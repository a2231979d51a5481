"""OpenVINO (the optional extra ``onefit[openvino]``): fp32 by converting the verified ONNX file
to OpenVINO's IR (``.xml`` + ``.bin``); int8 by NNCF's post-training quantization of that model on
the calibration batches (its transformer scheme where the model has attention), or, for a sub-model trained at 8 bits (one that fake-quantizes its
layers' inputs: ``ElasticConfig(activation_bits=8)``), by converting its verified int8 QDQ file,
which carries the ranges the family trained (``onefit.export``), so OpenVINO rounds as the family
did. Each is checked against PyTorch on inputs other than the example, run at fp32 inference
precision (OpenVINO's default on CPUs with AMX or AVX512-BF16 is bf16, which would be another model
than the one checked).

>>> OpenVINO.name, OpenVINO.precisions
('openvino', ('fp32', 'int8'))
"""

from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from onefit.runtimes.base import Built, Runtime, register_runtime


class _Session:
    """An OpenVINO compiled model behind ONNX Runtime's two calls (``get_inputs``, ``run``)."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._inputs = [SimpleNamespace(name=port.get_any_name()) for port in compiled.inputs]

    def get_inputs(self):
        return self._inputs

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        result = self.compiled([feeds[i.name] for i in self._inputs])
        return [np.asarray(result[self.compiled.output(0)])]


def _numpy(batch, n_inputs: int) -> list[np.ndarray]:
    items = batch[:n_inputs] if isinstance(batch, (tuple, list)) else (batch,)
    return [x.detach().cpu().numpy() for x in items]


@register_runtime
class OpenVINO(Runtime):
    name = "openvino"

    def missing(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "the openvino package is not installed (pip install 'onefit[openvino]')"
        return None

    def build(self, module, target: Path, precision: str, *, examples, calibration=None, eval_data=None, task=None,
              reduce_range: bool = True, bits=None) -> Built:
        import openvino as ov

        from onefit.export import export
        from onefit.export.onnx import accuracy_change, parity_inputs, rounds_activations, verify

        if precision == "int8" and calibration is None:
            raise ValueError("OpenVINO int8 needs calibration batches")
        trained = precision == "int8" and rounds_activations(module)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            # the fp32 graph, or the int8 QDQ graph of a sub-model trained at 8 bits, verified first
            export(module, onnx_path, examples, **(dict(quantize="int8", calibration=calibration, bits=bits,
                                                        reduce_range=reduce_range) if trained else {}))
            model = ov.convert_model(str(onnx_path))
        method = "trained-qdq" if trained else "fp32"
        if precision == "int8" and not trained:
            model, method = self._quantize(model, calibration, len(examples)), "nncf-ptq"
        xml = target.with_suffix(".xml")
        ov.save_model(model, str(xml), compress_to_fp16=False)
        session = self.session(xml)
        inputs = parity_inputs(examples, eval_data if eval_data is not None else calibration)
        if precision == "int8":  # as onefit.export checks int8: on the inputs it was calibrated for
            inputs = {k: v for k, v in inputs.items() if not k.startswith("random")}
        max_err, cosine = verify(session, module, inputs, atol=1e-4 if precision == "fp32" else None,
                                 floor=0.99999 if precision == "fp32" else 0.98,
                                 what=f"{type(module).__name__} (OpenVINO {precision})")
        metric = accuracy_change(module, session, eval_data, task) if eval_data is not None else None
        return Built(xml, [xml, xml.with_suffix(".bin")], precision, method, max_err, cosine, list(inputs), metric)

    @staticmethod
    def _quantize(model, calibration, n_inputs: int):
        import nncf

        batches = list(islice(calibration, 300))
        dataset = nncf.Dataset(batches, lambda batch: _numpy(batch, n_inputs))
        # NNCF's transformer scheme for a model with attention (a Softmax): it keeps the attention
        # scores and the normalisations in float and smooths the activations' outliers into the
        # weights; its default scheme moved a MiniLM sub-model's embeddings to cosine 0.24 of its
        # PyTorch self (the transformer scheme keeps the original MiniLM at 0.997)
        transformer = any(op.get_type_name() == "Softmax" for op in model.get_ops())
        return nncf.quantize(model, dataset, subset_size=len(batches),  # NNCF counts the dataset's items: batches
                             **({"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}))

    def session(self, path: Path, threads: int | None = None):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        return _Session(ov.Core().compile_model(str(path), "CPU", config))
