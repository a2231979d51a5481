"""Export to a single-file ONNX with a dynamic batch axis, checked against PyTorch before it lands.

The file is written next to its target under a temporary name, checked (ONNX Runtime must load
it, and its outputs must match PyTorch within tolerance on several inputs that differ from the
example: another batch size, random batches at two spreads, real data when given), and only
then renamed into place; a failed export leaves nothing at the target path. A trace that turned
an input-dependent value into a constant (the exporter's TracerWarning) is an error, not a
warning to silence.

>>> import torch
>>> sorted(parity_inputs((torch.rand(2, 4),)))
['example + 1 row (batch 3)', 'random (batch 3)', 'random at 4x the spread (batch 3)']
"""

from __future__ import annotations

import inspect
import io
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from onefit.tasks import first_output

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
    parity_inputs: list = field(default_factory=list)  # the inputs parity was checked on (all passed)

    def to_json(self) -> dict:
        return asdict(self)


def onnx_session(path_or_bytes, threads: int | None = None):
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model_bytes = _export_with(module, examples, name)
            frozen = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
            if frozen:  # the trace holds a value computed from the example as a constant
                raise ExportError(f"the trace froze an input-dependent value into a constant: "
                                  f"{str(frozen[0].message).strip().splitlines()[0][:300]}")
            return model_bytes, name
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
    shapes = tuple({0: batch} for _ in examples)
    params = list(inspect.signature(module.forward).parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):  # forward(x, *state): the rest is one tuple
        named = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        shapes = (*shapes[:named], shapes[named:])
    program = torch.onnx.export(module, examples, dynamo=True, input_names=names, external_data=False,
                                dynamic_shapes=shapes, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        program.save(os.path.join(tmp, "m.onnx"))
        return Path(tmp, "m.onnx").read_bytes()


def parity(session, module: nn.Module, inputs: tuple) -> tuple[float, float, float]:
    """Max absolute error and cosine between ONNX Runtime's and PyTorch's first outputs on
    ``inputs``, and the output's scale (its largest magnitude, at least 1) the error is judged by."""
    with torch.no_grad():
        expected = first_output(module(*inputs)).detach().double().flatten()
    got = torch.from_numpy(np.asarray(run_onnx(session, inputs))).double().flatten()
    if got.shape != expected.shape:
        raise ExportError(
            f"parity check failed: ONNX output has {got.numel()} values, PyTorch {expected.numel()} on a batch of "
            f"{inputs[0].shape[0]}; the graph froze a shape (often a computation that leaves torch)"
        )
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=0).item()
    return (got - expected).abs().max().item(), cosine, max(1.0, expected.abs().max().item())


def _check_inputs(examples) -> tuple[torch.Tensor, ...]:
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise ValueError("example_inputs must be a tensor or a tuple of tensors")
    return tuple(examples)


def parity_inputs(examples: tuple, data: Iterable | None = None, seed: int = 0) -> dict[str, tuple]:
    """Inputs that differ from the example, to catch a graph that froze an input-dependent value:
    the example with one more row (the batch axis is dynamic), a random batch of another size
    drawn like the example, one at four times its spread, and the first batch of ``data``."""
    g = torch.Generator().manual_seed(seed)
    n = 3 if examples[0].shape[0] != 3 else 5

    def like(x: torch.Tensor, spread: float) -> torch.Tensor:
        shape = (n, *x.shape[1:])
        if x.dtype == torch.bool:
            return torch.rand(shape, generator=g) < 0.5
        if not x.is_floating_point():  # token ids, masks: integers over the example's range
            low, high = int(x.min()), int(x.max())
            return torch.randint(low, high + 1, shape, generator=g, dtype=x.dtype)
        if not torch.isfinite(x).all():  # an additive mask (-inf where not attended): the example's own rows
            return x[torch.randint(0, x.shape[0], (n,), generator=g)]
        std = x.float().std().item() if x.numel() > 1 else 1.0
        return (x.float().mean() + spread * (std or 1.0) * torch.randn(shape, generator=g)).to(x.dtype)

    inputs = {f"example + 1 row (batch {examples[0].shape[0] + 1})": tuple(torch.cat([x, x[:1]]) for x in examples),
              f"random (batch {n})": tuple(like(x, 1.0) for x in examples)}
    if any(x.is_floating_point() for x in examples):
        inputs[f"random at 4x the spread (batch {n})"] = tuple(like(x, 4.0) for x in examples)
    # the first batch of data that can be read twice (a one-shot iterator is left to its owner)
    batch = next(iter(data), None) if data is not None and iter(data) is not data else None
    if batch is not None:
        real = tuple(batch[: len(examples)]) if isinstance(batch, (tuple, list)) else (batch,)
        if all(isinstance(x, torch.Tensor) and x.shape[1:] == e.shape[1:] and x.dtype == e.dtype
               for x, e in zip(real, examples)):
            inputs[f"data (batch {real[0].shape[0]})"] = real
    return inputs


def verify(session, module: nn.Module, inputs: dict[str, tuple], *, atol: float | None, floor: float,
           what: str) -> tuple[float, float]:
    """Parity of ``session`` with ``module`` on every named input; raises ``ExportError`` naming the
    first that fails. ``atol`` is relative to each output's scale (None: cosine only). Returns the
    worst max abs error and cosine."""
    worst_err, worst_cos = 0.0, 1.0
    for name, x in inputs.items():
        max_err, cosine, scale = parity(session, module, x)
        if not cosine >= floor or (atol is not None and not max_err <= atol * scale):
            allowed = "" if atol is None else f" (allowed {atol * scale:.3g})"
            hint = ("A module that computes a Python number from its input (float(x.mean()), .item(), .numpy()) "
                    "exports that number as a constant" if atol is not None else
                    "Quantization moved the output further than allowed: train the family with 8-bit weights "
                    "(ElasticConfig bits) or calibrate on more data")
            raise ExportError(f"parity check failed for {what} on {name}: max abs error {max_err:.3g}{allowed}, "
                              f"cosine {cosine:.6f} (needs >= {floor}). {hint}")
        worst_err, worst_cos = max(worst_err, max_err), min(worst_cos, cosine)
    return worst_err, worst_cos


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
    task=None,
) -> ExportReport:
    """Export ``module`` to ``path`` as one ONNX file, verified against PyTorch.

    quantize: None (fp32) or "int8": static QDQ with ``calibration`` batches for models with
    convolutions, dynamic quantization for Linear-only models. Parity, on every input of
    ``parity_inputs`` (the report lists them): the fp32 graph must match within ``atol``
    (relative to the output scale) and cosine 0.99999; int8 must reach ``min_cosine``
    (default 0.98) on the example-like and real inputs. ``eval_data`` (batches of ``task``,
    classification by default) adds the task's metric of the file and its change to the report.
    reduce_range (int8): 7-bit weights, which every x86 CPU runs without overflow; ``False`` keeps
    8-bit weights, for files that will only run on CPUs with VNNI or on ARM.

    bits: the bit-width of each layer of a quantized sub-model (``family.bits(arch)``; a layer left
    out runs at 32). With ``quantize="int8"`` only the 8-bit layers become int8 (QDQ) and the
    32-bit ones stay fp32; a layer below 8 bits is refused, since ONNX Runtime has no sub-8-bit
    kernels. Without ``quantize`` the file holds fp32 values that carry the quantized levels.
    """
    from onefit.elastic.quant import without_input_quantization
    from onefit.export.quantize import excluded_nodes, input_overrides, quantize_int8

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

    # int8 of a sub-model that fake-quantizes its layers' inputs: the plain layers go to the runtime's
    # quantizer with those inputs' trained ranges, and the int8 file is checked against the sub-model
    ranges = {}
    graph_module = module
    if quantize == "int8" and rounds_activations(module):
        graph_module, ranges = without_input_quantization(module)
    model_bytes, used = _export_fp32(graph_module, examples, exporter)
    inputs = parity_inputs(examples, eval_data if eval_data is not None else calibration)
    # a sub-model that fake-quantizes its activations (and any graph before int8) is checked by
    # cosine alone: a rounding that flips on float noise moves an activation by a quantization step
    fake_quantized = rounds_activations(graph_module)
    rounds = quantize is not None or fake_quantized
    floor = ROUNDING_COSINE if fake_quantized else 0.99999
    max_err, cosine = verify(_runnable(model_bytes, module), graph_module, inputs, atol=None if rounds else atol,
                             floor=floor if min_cosine is None or quantize else min_cosine,
                             what=f"{type(module).__name__} (fp32)")
    method = "fp32"
    session = None
    if quantize == "int8":
        exclude = () if bits is None else excluded_nodes(model_bytes, bits)
        overrides = input_overrides(model_bytes, ranges) if ranges else None
        model_bytes, method = quantize_int8(model_bytes, examples, calibration, exclude, reduce_range, overrides)
        session = _runnable(model_bytes, module)
        # the fp32 graph is verified on every input above; the int8 one within its own tolerance,
        # on the inputs it was calibrated for (random batches leave its calibrated ranges)
        kept = {k: v for k, v in inputs.items() if not k.startswith("random")}
        max_err, cosine = verify(session, module, kept, atol=None, floor=0.98 if min_cosine is None else min_cosine,
                                 what=f"{type(module).__name__} ({method})")
    report = ExportReport(str(path), len(model_bytes), used, quantize, method, max_err, cosine,
                          parity_inputs=list(inputs if quantize is None else kept))
    if eval_data is not None:
        report.accuracy = accuracy_change(module, session or _runnable(model_bytes, module), eval_data, task)
    _write_atomic(path, model_bytes)
    return report


ROUNDING_COSINE = 0.999  # the fp32 graph of a sub-model that rounds its activations (ElasticConfig activation_bits)


def rounds_activations(module: nn.Module) -> bool:
    """Whether ``module`` runs a layer behind fake quantization of its input (an extracted sub-model
    of a family with ``activation_bits``): its int8 file takes the ranges the family trained."""
    from onefit.elastic.quant import weight_layer

    return any(weight_layer(m) is not m for m in module.modules())


def _runnable(model_bytes: bytes, module: nn.Module):
    try:
        return onnx_session(model_bytes)
    except Exception as err:
        raise ExportError(f"ONNX Runtime cannot run the exported {type(module).__name__}: {err}") from err


def _check_int8_bits(bits: Mapping[str, int]) -> None:
    """int8 kernels run 8-bit layers; refuse layers below 8 bits rather than silently round them to 8."""
    from onefit.elastic.quant import check_bits

    low = {name: b for name, b in bits.items() if check_bits(b, f"bits[{name!r}]") < 8}
    if low:
        raise ValueError(
            f"quantize='int8' cannot run layers below 8 bits {low}: ONNX Runtime has no sub-8-bit integer "
            "kernels. Export with quantize=None (fp32 values holding the low-bit levels, as fast as fp32), "
            "use onefit.export.packed.pack for their packed size, or choose 8 bits for these layers")


def accuracy_change(module: nn.Module, session, data: Iterable, task) -> dict:
    """The task's metric of the PyTorch module and of the ONNX file on ``data``, and the change."""
    from onefit.tasks import ClassificationTask, evaluate

    task = task or ClassificationTask()
    onnx_value = task.metric(lambda inputs: torch.from_numpy(np.asarray(run_onnx(session, inputs))), data)
    torch_value = evaluate(module, data, task)
    return {"metric": task.metric_name, "torch": torch_value, "onnx": onnx_value, "change": onnx_value - torch_value}


def _write_atomic(path: Path, data: bytes) -> None:
    from onefit.checkpoint import atomic_write

    atomic_write(path, data)
