"""Every intermediate tensor of two graphs as outputs: what ``dpnet_bench.localize`` compares.

Polygraphy's ``--onnx-outputs mark all`` for an FP32 graph and its low-precision copy: the
node outputs both compute (same name, same element type), marked as graph outputs of ONNX
Runtime sessions that keep every marked tensor as the graph computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["dequantized", "elem_type", "error_terms", "marked_session", "shared_tensors"]

_FLOAT_TYPES: Final = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16})


def shared_tensors(fp32: onnx.ModelProto, low: onnx.ModelProto) -> list[str]:
    """Node outputs both graphs compute with the same known element type (the low-precision
    copy keeps the FP32 names; the INT8 similarity's int32 scores are left to
    :mod:`dpnet_bench.localize_ccm`); graph outputs too. FP32 topological order."""
    low_outputs = {name for node in low.graph.node for name in node.output}
    return [
        name
        for node in fp32.graph.node
        for name in node.output
        if name in low_outputs and _comparable(elem_type(fp32, name), elem_type(low, name))
    ]


def _comparable(fp32: int | None, low: int | None) -> bool:
    # Float tensors compare across float types (FP32 vs FP16); integer ones only with their
    # own type (the INT8 similarity's int32 scores are not cosines).
    if fp32 is None or low is None:
        return False
    return fp32 == low or {fp32, low} <= _FLOAT_TYPES


def dequantized(model: onnx.ModelProto, names: Sequence[str]) -> list[str]:
    # What the consumers of each tensor see: its QuantizeLinear -> DequantizeLinear round trip
    # when it has one (an INT8 graph drops a Relu into the Q's clamp: the tensor of that name
    # is then the Conv's output before the clamp).
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def seen(name: str) -> str:
        for quantize in consumers.get(name, []):
            pair = [
                c for c in consumers.get(quantize.output[0], []) if c.op_type == "DequantizeLinear"
            ]
            if quantize.op_type == "QuantizeLinear" and pair:
                return pair[0].output[0]
        return name

    return [seen(name) for name in names]


def elem_type(model: onnx.ModelProto, name: str) -> int | None:
    for info in (*model.graph.value_info, *model.graph.output):
        if info.name == name and info.type.HasField("tensor_type"):
            return int(info.type.tensor_type.elem_type)
    return None


def marked_session(model: onnx.ModelProto, names: Sequence[str]) -> ort.InferenceSession:
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    existing = {output.name for output in marked.graph.output}
    for name in dict.fromkeys(names):
        elem = elem_type(model, name)
        if name not in existing and elem is not None:
            marked.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    # Keep every marked tensor as the graph computes it: no fusion may skip it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(
        marked.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def error_terms(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    if np.issubdtype(reference.dtype, np.floating):
        ours, theirs = reference.astype(np.float64), candidate.astype(np.float64)
        return float(np.sum((theirs - ours) ** 2)), float(np.sum(ours**2))
    return float(np.count_nonzero(reference != candidate)), float(reference.size)
