"""int8 through ONNX Runtime's quantization tools.

Dynamic int8 makes convolutions slower on CPU, so models with convolutions get static QDQ
quantization with activation ranges calibrated on real batches; Linear-only models (e.g.
transformers) get dynamic quantization, whose activation ranges are computed at run time.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from itertools import islice
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from onefit.elastic.quant import WRAPPED

MAX_CALIBRATION_BATCHES = 32


def _calibration_batches(calibration: Iterable, examples: tuple) -> list[np.ndarray]:
    expected = tuple(examples[0].shape[1:])
    batches = []
    for i, item in enumerate(islice(calibration, MAX_CALIBRATION_BATCHES)):
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"calibration batch {i} has shape {got}; expected (batch, *{expected})")
        batches.append(x.detach().cpu().numpy().astype(np.float32))
    if not batches:
        raise ValueError("calibration data is empty")
    return batches


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantizer logs advice on the root logger at every call; keep it out."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


LAYER_OPS = ("Conv", "Gemm", "MatMul")


def _module_name(node_name: str) -> str:
    """The PyTorch module a torchscript-exported node came from: "/stages/stages.0/stages.0.0/conv1/Conv"
    -> "stages.0.0.conv1", "/stages/stages.1/stages.1.0/shortcut/shortcut.0/Conv" -> "stages.1.0.shortcut.0" (a
    scope is an attribute's name, or a container's scope with its child's index).

    >>> _module_name("/stages/stages.1/stages.1.0/shortcut/shortcut.0/Conv")
    'stages.1.0.shortcut.0'
    """
    name = previous = ""
    for scope in node_name.strip("/").split("/")[:-1]:
        if previous and scope.startswith(previous + "."):  # a container's child: "shortcut" -> "shortcut.0"
            name += scope[len(previous):]
        else:  # an attribute of the module above
            name = f"{name}.{scope}" if name else scope
        previous = scope
    return name


def _layer_name(node_name: str, layers: Mapping[str, int]) -> str:
    """The layer of ``layers`` a node belongs to, seeing through the wrapper that runs a layer behind
    its input quantization (``onefit.elastic.quant.weight_layer``): "/1/layer/Gemm" -> "1"."""
    name = _module_name(node_name)
    suffix = "." + WRAPPED
    if name not in layers and name.endswith(suffix) and name[: -len(suffix)] in layers:
        return name[: -len(suffix)]
    return name


def excluded_nodes(model_bytes: bytes, bits: Mapping[str, int]) -> list[str]:
    """The Conv / Gemm / MatMul nodes of layers that ``bits`` leaves at 32 bits (absent means 32),
    which int8 quantization must leave in fp32. Raises if a layer of ``bits`` has no node."""
    import onnx

    from onefit.export.onnx import ExportError

    nodes = [n.name for n in onnx.load_from_string(model_bytes).graph.node if n.op_type in LAYER_OPS]
    layers = {n: _layer_name(n, bits) for n in nodes}
    missing = sorted(set(bits) - set(layers.values()))
    if missing:
        raise ExportError(f"cannot find the ONNX nodes of layers {missing} (found {sorted(set(layers.values()))[:8]}): "
                          "the names in bits must be the exported module's layer names, and node names follow "
                          "them only with exporter='torchscript' (what exporter='auto' tries first)")
    return [n for n in nodes if bits.get(layers[n], 32) != 8]


def input_overrides(model_bytes: bytes, ranges: Mapping[str, tuple]) -> dict[str, list[dict]]:
    """ONNX Runtime's ``TensorQuantOverrides`` that quantize the input of each layer of ``ranges``
    (layer name -> (scale, zero point), a family's trained activation ranges) with that scale and
    zero point instead of ranges calibrated anew: the int8 file rounds each layer's input to the
    levels the family trained with. Raises if a layer of ``ranges`` has no node."""
    import onnx

    from onefit.export.onnx import ExportError

    nodes = [n for n in onnx.load_from_string(model_bytes).graph.node if n.op_type in LAYER_OPS]
    overrides, found = {}, set()
    for node in nodes:
        name = _layer_name(node.name, ranges)
        if name in ranges:
            scale, zero_point = ranges[name]
            overrides[node.input[0]] = [{"scale": np.asarray(scale, dtype=np.float32).reshape(()),
                                         "zero_point": np.asarray(zero_point, dtype=np.uint8).reshape(())}]
            found.add(name)
    if missing := sorted(set(ranges) - found):
        raise ExportError(f"cannot find the ONNX nodes of layers {missing} to give them their activation ranges")
    return overrides


def quantize_int8(model_bytes: bytes, examples: tuple, calibration: Iterable | None,
                  exclude: Sequence[str] = (), reduce_range: bool = True,
                  overrides: Mapping[str, list] | None = None) -> tuple[bytes, str]:
    """Return the int8 model's bytes and the method used ("static-qdq" or "dynamic"); the nodes
    named in ``exclude`` stay in fp32; ``overrides`` (``input_overrides``) fix the quantization of
    the tensors they name (static QDQ only).

    reduce_range: weights on 7 bits. x86 CPUs without VNNI (AVX2 only) multiply u8 activations by
    s8 weights in 16-bit pairs that saturate with full-range weights: on an AMD EPYC the digits
    CNN's int8 file reached cosine 0.9967 to PyTorch, and 0.99992 with 7-bit weights."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static,
    )

    has_conv = any(node.op_type == "Conv" for node in onnx.load_from_string(model_bytes).graph.node)
    if has_conv and calibration is None:
        raise ValueError(
            "int8 export of a model with convolutions needs calibration=... (a few batches of real "
            "inputs): it uses static QDQ quantization, since dynamic int8 slows convolutions down"
        )
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model_bytes)
        if has_conv:
            batches = _calibration_batches(calibration, examples)
            name = onnx.load_from_string(model_bytes).graph.input[0].name

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter({name: b} for b in batches)

                def get_next(self):
                    return next(self.items, None)

            quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            reduce_range=reduce_range, nodes_to_exclude=list(exclude),
                            extra_options={"TensorQuantOverrides": dict(overrides or {})})
            return dst.read_bytes(), "static-qdq"
        # Per-channel weight scales: on MiniLM, embedding cosine to fp32 goes from ~0.94 to ~0.98+.
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range, nodes_to_exclude=list(exclude))
        return dst.read_bytes(), "dynamic"
