"""TensorRT's rules for the QuantizeLinear/DequantizeLinear nodes of an INT8 graph.

Part of ``dpnet-export check`` (:func:`dpnet_export.lint.lint_onnx` reports each problem as an
error). TensorRT's explicit quantization takes the Q/DQ scales at build time and quantizes
symmetrically only (the parser's table: "zero point must be 0"), so every Q/DQ node needs:

- a constant, positive, finite scale (an initializer or Constant);
- a constant INT8 zero point of 0 (a missing one makes QuantizeLinear output UINT8; FP8, FP4
  and INT4 types are TensorRT's too and pass);
- per-channel scales (more than one value) only on weights, a constant quantized by a Q/DQ that
  feeds the weight input of a Conv (axis 0, output channels K), ConvTranspose (axis 1),
  MatMul (the last axis, N) or Gemm (N: axis 1, or 0 with ``transB``);
- a DequantizeLinear input of INT8 (or FP8/FP4/INT4), never INT32 (a quantized bias) or UINT8.

And for a MatMul whose scores an ArgMax reads (the CCM similarity, :mod:`dpnet_export.ccm_int8`):

- both inputs quantized or neither: TensorRT builds an INT8 GEMM only when Q/DQ feed both
  operands; one quantized activation only rounds it and runs the MatMul in float;
- no Q/DQ between the MatMul and the ArgMax: scores rounded to 8 bits tie near-equal matches
  (the first one wins), and TensorRT's ArgMax takes no INT8.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["QDQ_OPS", "qdq_problems"]

QDQ_OPS: Final = frozenset({"QuantizeLinear", "DequantizeLinear"})
_TENSORRT_TYPES: Final = frozenset(
    {TensorProto.INT8, TensorProto.INT4, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT4E2M1}
)

Problem = tuple[str, str, str]
"""(node label, op type, message) of one error."""


def qdq_problems(graph: onnx.GraphProto, types: Mapping[str, int]) -> Iterator[Problem]:
    """The TensorRT problems of every Q/DQ node of ``graph`` (module docstring).

    Args:
        graph: the top-level graph.
        types: tensor name -> ONNX element type (from shape inference), for DQ inputs.
    """
    constants = _constants(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # A weight Q/DQ pair: the DequantizeLinear's weight is its QuantizeLinear's constant.
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in constants:
            constants.setdefault(node.output[0], constants[node.input[0]])
    yield from _argmax_matmul_problems(graph, constants, consumers)
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = node.name or node.output[0]
        for message in (
            *_scale_problems(node, constants),
            *_zero_point_problems(node, constants, types),
            *_channel_problems(node, constants, consumers),
        ):
            yield label, node.op_type, message


def _argmax_matmul_problems(
    graph: onnx.GraphProto,
    constants: Mapping[str, np.ndarray],
    consumers: Mapping[str, list[onnx.NodeProto]],
) -> Iterator[Problem]:
    producers = {name: node for node in graph.node for name in node.output}

    def op_of(name: str) -> str:
        return producers[name].op_type if name in producers else ""

    for node in graph.node:
        users = consumers.get(node.output[0], []) if node.op_type == "MatMul" else []
        readers = _score_readers(users, consumers)
        if not readers or any(reader.op_type != "ArgMax" for reader in readers):
            continue
        label = node.name or node.output[0]
        activations = [name for name in node.input[:2] if name not in constants]
        quantized = [name for name in activations if op_of(name) == "DequantizeLinear"]
        if quantized and len(quantized) < len(activations):
            yield (
                label,
                node.op_type,
                (
                    f"scores for an ArgMax from {quantized[0]!r} quantized and the other operand "
                    "float: TensorRT builds an INT8 GEMM only with Q/DQ on both inputs (S8, per "
                    "tensor); quantize both or neither"
                ),
            )
        if any(user.op_type in QDQ_OPS for user in users):
            yield (
                label,
                node.op_type,
                (
                    "a Q/DQ between these scores and their ArgMax rounds them to 8 bits: "
                    "near-equal matches tie and the first one wins; quantize the inputs only"
                ),
            )


def _score_readers(
    users: list[onnx.NodeProto], consumers: Mapping[str, list[onnx.NodeProto]]
) -> list[onnx.NodeProto]:
    # The nodes that read a MatMul's scores, through a Q -> DQ round trip if there is one.
    readers: list[onnx.NodeProto] = []
    for user in users:
        if user.op_type != "QuantizeLinear":
            readers.append(user)
            continue
        for dequantize in consumers.get(user.output[0], []):
            readers.extend(consumers.get(dequantize.output[0], []))
    return readers


def _scale_problems(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> Iterator[str]:
    scale = constants.get(node.input[1])
    if scale is None:
        yield f"scale {node.input[1]!r} is computed; TensorRT needs it at build time (a constant)"
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        yield f"scale {node.input[1]!r} must be positive and finite, got min {scale.min():g}"


def _zero_point_problems(
    node: onnx.NodeProto, constants: Mapping[str, np.ndarray], types: Mapping[str, int]
) -> Iterator[str]:
    has_zero_point = len(node.input) > 2 and bool(node.input[2])
    if has_zero_point:
        quantized = types.get(node.input[2])
    elif node.op_type == "QuantizeLinear":
        quantized = TensorProto.UINT8  # ONNX's default output type
    else:
        quantized = types.get(node.input[0])
    if quantized is not None and quantized not in _TENSORRT_TYPES:
        yield (
            f"quantizes {node.input[0]!r} to {TensorProto.DataType.Name(quantized)}: TensorRT "
            "takes INT8 (or FP8, FP4, INT4) Q/DQ only, no UINT8 activations or INT32 biases; "
            "lint the TensorRT flavour, *_int8_trt.onnx"
        )
    if not has_zero_point:
        return
    zero_point = constants.get(node.input[2])
    if zero_point is None:
        yield f"zero point {node.input[2]!r} is computed; TensorRT needs a constant 0"
    elif np.any(zero_point != 0):
        yield f"zero point {node.input[2]!r} is not 0: TensorRT quantizes symmetrically only"


def _channel_problems(
    node: onnx.NodeProto,
    constants: Mapping[str, np.ndarray],
    consumers: Mapping[str, list[onnx.NodeProto]],
) -> Iterator[str]:
    scale = constants.get(node.input[1])
    if scale is None or scale.size <= 1:
        return
    weight = constants.get(node.input[0])
    dequantized = node.output[0]
    if node.op_type == "QuantizeLinear":
        pair = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        dequantized = pair[0].output[0] if pair else ""
    users = [(c, list(c.input).index(dequantized)) for c in consumers.get(dequantized, [])]
    axes = [_weight_axis(user, index, weight) for user, index in users]
    if weight is None or not axes or None in axes:
        yield (
            "per-channel scales on a tensor that is not the weight input of a Conv, "
            "ConvTranspose, MatMul or Gemm: TensorRT quantizes activations per tensor"
        )
        return
    axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 1) % weight.ndim
    expected = {expected % weight.ndim for expected in axes if expected is not None}
    if expected != {axis}:
        yield (
            f"per-channel axis {axis} of weight {node.input[0]!r}; TensorRT needs the "
            f"output-channel axis {sorted(expected)}"
        )


def _weight_axis(user: onnx.NodeProto, index: int, weight: np.ndarray | None) -> int | None:
    if index != 1 or weight is None:
        return None
    if user.op_type == "Conv":
        return 0
    if user.op_type == "ConvTranspose":
        return 1
    if user.op_type == "MatMul":
        return weight.ndim - 1
    if user.op_type == "Gemm":
        trans_b = next((attr.i for attr in user.attribute if attr.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((attr.t for attr in node.attribute if attr.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values
