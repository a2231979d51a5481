"""Export to a single-file ONNX with a dynamic batch axis, checked against PyTorch before it lands.

The file is written next to its target under a temporary name, checked (ONNX Runtime must load
it, and its outputs must match PyTorch within tolerance), and only then renamed into place; a
failed export leaves nothing at the target path.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

EXPORTERS = ("auto", "dynamo", "torchscript")
QUANTIZE = (None, "int8")


class ExportError(RuntimeError):
    """The module could not be exported, ONNX Runtime could not run it, or outputs differ."""


@dataclass
class ExportReport:
    path: str
    bytes: int
    exporter: str
    quantize: str | None
    method: str  # "fp32", "static-qdq" or "dynamic"
    max_abs_error: float
    cosine: float
    accuracy: dict | None = None  # {"torch": .., "onnx": .., "change": ..} when eval data is given

    def to_json(self) -> dict:
        return asdict(self)


def _session(path_or_bytes, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    feeds = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0]


def _export_fp32(module: nn.Module, examples: tuple, exporter: str) -> tuple[bytes, str]:
    errors = []
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    for name in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _export_with(module, examples, name), name
        except Exception as err:  # exporters raise many types; report them all together
            errors.append(f"{name}: {type(err).__name__}: {str(err).strip().splitlines()[-1][:400]}")
    raise ExportError(f"cannot export {type(module).__name__} to ONNX. " + " | ".join(errors))


def _export_with(module: nn.Module, examples: tuple, exporter: str) -> bytes:
    names = [f"input{i}" for i in range(len(examples))]
    if exporter == "torchscript":
        buffer = io.BytesIO()
        torch.onnx.export(module, examples, buffer, dynamo=False, input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} for n in names + ["output"]}, opset_version=17)
        return buffer.getvalue()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(module, examples, dynamo=True, input_names=names, external_data=False,
                                dynamic_shapes=tuple({0: batch} for _ in examples), verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        program.save(os.path.join(tmp, "m.onnx"))
        return Path(tmp, "m.onnx").read_bytes()


def first_output(output) -> torch.Tensor:
    """The first tensor of a module's output: a tensor, a tuple or list, or a dict-like model output."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return first_output(next(iter(output.values())))
    return first_output(output[0])


def parity(session, module: nn.Module, inputs: tuple) -> tuple[float, float]:
    """Max absolute error and cosine between ONNX Runtime's and PyTorch's first outputs on ``inputs``."""
    with torch.no_grad():
        expected = first_output(module(*inputs)).detach().double().flatten()
    got = torch.from_numpy(np.asarray(run_onnx(session, inputs))).double().flatten()
    if got.shape != expected.shape:
        raise ExportError(
            f"parity check failed: ONNX output has {got.numel()} values, PyTorch {expected.numel()} on a batch of "
            f"{inputs[0].shape[0]}; the graph froze a shape (often a computation that leaves torch)"
        )
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=0).item()
    return (got - expected).abs().max().item(), cosine


def _check_inputs(examples) -> tuple[torch.Tensor, ...]:
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise ValueError("example_inputs must be a tensor or a tuple of tensors")
    return tuple(examples)


def _batch_variant(examples: tuple) -> tuple:
    """The examples with one more row, to prove the batch axis really is dynamic."""
    return tuple(torch.cat([x, x[:1]]) for x in examples)


def export(
    module: nn.Module,
    path: str | Path,
    example_inputs,
    *,
    quantize: str | None = None,
    calibration: Iterable | None = None,
    eval_data: Iterable | None = None,
    exporter: str = "auto",
    atol: float = 1e-4,
    min_cosine: float | None = None,
    bits: Mapping[str, int] | None = None,
    reduce_range: bool = True,
) -> ExportReport:
    """Export ``module`` to ``path`` as one ONNX file, verified against PyTorch.

    quantize: None (fp32) or "int8": static QDQ with ``calibration`` batches for models with
    convolutions, dynamic quantization for Linear-only models. Parity: fp32 must match within
    ``atol`` (relative to the output scale) and cosine 0.99999; int8 must reach ``min_cosine``
    (default 0.98). ``eval_data`` of ``(x, y)`` batches adds the accuracy change to the report.
    reduce_range (int8): 7-bit weights, which every x86 CPU runs without overflow; ``False`` keeps
    8-bit weights, for files that will only run on CPUs with VNNI or on ARM.

    bits: the bit-width of each layer of a quantized sub-model (``family.bits(arch)``; a layer left
    out runs at 32). With ``quantize="int8"`` only the 8-bit layers become int8 (QDQ) and the
    32-bit ones stay fp32; a layer below 8 bits is refused, since ONNX Runtime has no sub-8-bit
    kernels. Without ``quantize`` the file holds fp32 values that carry the quantized levels.
    """
    from onefit.export.quantize import excluded_nodes, quantize_int8

    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if quantize == "int8" and bits is not None:
        _check_int8_bits(bits)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"export needs an nn.Module, got {type(module).__name__}")
    examples = _check_inputs(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()

    model_bytes, used = _export_fp32(module, examples, exporter)
    method = "fp32"
    if quantize == "int8":
        exclude = () if bits is None else excluded_nodes(model_bytes, bits)
        model_bytes, method = quantize_int8(model_bytes, examples, calibration, exclude, reduce_range)
    try:
        session = _session(model_bytes)
    except Exception as err:
        raise ExportError(f"ONNX Runtime cannot run the exported {type(module).__name__}: {err}") from err
    max_err, cosine = parity(session, module, _batch_variant(examples))
    with torch.no_grad():
        scale = max(1.0, first_output(module(*examples)).abs().max().item())
    floor = (0.98 if quantize else 0.99999) if min_cosine is None else min_cosine
    if cosine < floor or (not quantize and max_err > atol * scale):
        raise ExportError(
            f"parity check failed for {type(module).__name__} ({method}): max abs error {max_err:.3g} "
            f"(allowed {atol * scale:.3g}), cosine {cosine:.6f} (needs >= {floor})"
        )
    report = ExportReport(str(path), len(model_bytes), used, quantize, method, max_err, cosine)
    if eval_data is not None:
        report.accuracy = _accuracy_change(module, session, eval_data)
    _write_atomic(path, model_bytes)
    return report


def _check_int8_bits(bits: Mapping[str, int]) -> None:
    """int8 kernels run 8-bit layers; refuse layers below 8 bits rather than silently round them to 8."""
    from onefit.elastic.quant import check_bits

    low = {name: b for name, b in bits.items() if check_bits(b, f"bits[{name!r}]") < 8}
    if low:
        raise ValueError(
            f"quantize='int8' cannot run layers below 8 bits {low}: ONNX Runtime has no sub-8-bit integer "
            "kernels. Export with quantize=None (fp32 values holding the low-bit levels, as fast as fp32), "
            "use onefit.export.packed.pack for their packed size, or choose 8 bits for these layers")


def _accuracy_change(module: nn.Module, session, data: Iterable) -> dict:
    from onefit.train import evaluate

    correct = total = 0
    for x, y in data:
        correct += int((np.argmax(run_onnx(session, (x,)), -1) == y.numpy()).sum())
        total += len(y)
    torch_acc, onnx_acc = evaluate(module, data), 100.0 * correct / max(total, 1)
    return {"torch": torch_acc, "onnx": onnx_acc, "change": onnx_acc - torch_acc}


def _write_atomic(path: Path, data: bytes) -> None:
    from onefit.checkpoint import atomic_write

    atomic_write(path, data)
