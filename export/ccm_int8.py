"""The CCM's similarity MatMul in INT8 (``dpnet-export onnx --int8 --int8-ccm``, the default).

The similarity ``s = Ks @ Kq`` (``[B,K,Ns,D] x [B,1,D,Nq] -> [B,K,Ns,Nq]``, 5.8 GFLOP per
shot at 41 x 41 with 1024 channels) is the one large float GEMM the INT8 graphs had left. Its
two inputs are L2-normalised keys (every value in [-1, 1]), so a symmetric per-tensor INT8
scale is natural; its only consumers are the two ArgMax of the cycle, and those read the
scores' order, not their values. Each flavour runs it its runtime's fastest way, with the
scales of the same calibration as the rest of the graph (``quantize_static`` calibrates the
keys with every other tensor; :func:`similarity_overrides` makes their scales symmetric):

- ``ort`` (ONNX Runtime CPU): ``MatMulInteger`` with the support keys in uint8 (zero point
  128: a symmetric int8 shifted into u8, the A operand MLAS's u8 x s8 VNNI kernel wants) and
  the query keys in int8 (zero point 0); both ArgMax read the int32 scores
  (:func:`to_matmul_integer`). Measured side by side (``python -m dpnet_bench.similarity_int8``,
  1681 x 1024 x 1681K with both ArgMax): the QDQ MatMul (ONNX Runtime fuses it to
  ``MatMulIntegerToFloat``) pays for a float copy of the scores; ``QLinearMatMul`` rounds
  the scores themselves to 8 bits, so near-equal matches tie and fewer of FP32's matches
  survive than with the exact integer products; int8 support keys (S8S8) fall off MLAS's
  VNNI path and are slower than FP32.
- ``trt`` (TensorRT): a symmetric S8S8 QuantizeLinear/DequantizeLinear pair per tensor on
  both inputs and none on the output; TensorRT fuses the pairs into an INT8 GEMM with a float
  output, which the ArgMax read as before (``dpnet-export check`` holds it to that,
  :func:`dpnet_export.lint_qdq.qdq_problems`).

The cycle gather, the one-hot MatMul and everything after the ArgMax stay as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import onnx

from dpnet_export.lint_qdq import QDQ_OPS
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, node_scopes

__all__ = [
    "similarity_node",
    "similarity_overrides",
    "similarity_qdq_nodes",
    "stray_ccm_qdq",
    "to_matmul_integer",
]

_SIMILARITY_OPS: Final = frozenset({"MatMul", "MatMulInteger"})
_QDQ_CHAIN: Final = ("QuantizeLinear", "DequantizeLinear")


def similarity_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The CCM's similarity MatMul (or its MatMulInteger), ``None`` in a graph without a CCM.

    It is the MatMul of the ``ccm`` scope whose output only ArgMax nodes read (the other
    CCM MatMul, the one-hot one, feeds a Greater).

    Raises:
        RuntimeError: more than one such node (the CCM was changed without this module).
    """
    consumers = _consumers(model.graph)
    found = [
        node
        for node in model.graph.node
        if node.op_type in _SIMILARITY_OPS
        and CCM_SCOPE in node_scopes(node)
        and consumers.get(node.output[0])
        and all(user.op_type == "ArgMax" for user in consumers[node.output[0]])
    ]
    if len(found) > 1:
        raise RuntimeError(f"the CCM has {len(found)} similarity MatMuls, expected one")
    return found[0] if found else None


def similarity_overrides(
    node: onnx.NodeProto, support_keys: str
) -> dict[str, list[dict[str, Any]]]:
    """``quantize_static``'s ``TensorQuantOverrides`` for the similarity's two inputs.

    Args:
        node: :func:`similarity_node`.
        support_keys: the support keys' (input A) type, ``uint8`` or ``int8``; the query keys
            are int8. Both symmetric: zero point 128 for uint8, 0 for int8.
    """
    from onnxruntime.quantization import QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    return {
        node.input[0]: [{"quant_type": types[support_keys], "symmetric": True}],
        node.input[1]: [{"quant_type": QuantType.QInt8, "symmetric": True}],
    }


def to_matmul_integer(model: onnx.ModelProto) -> None:
    """Turn the QDQ similarity ``DQ(a), DQ(b) -> MatMul`` into ``MatMulInteger(a, b)``, in place.

    The int32 scores are the float ones divided by ``scale_a * scale_b`` (a positive constant),
    so both ArgMax pick the same positions; the DequantizeLinear nodes that only fed the
    MatMul are removed. The node keeps the MatMul's name and scope metadata.

    Raises:
        RuntimeError: the similarity is missing or not fed by two DequantizeLinear.
    """
    node = similarity_node(model)
    producers = {name: item for item in model.graph.node for name in item.output}
    dequantized = [producers.get(name) for name in node.input] if node is not None else []
    if node is None or any(dq is None or dq.op_type != "DequantizeLinear" for dq in dequantized):
        raise RuntimeError("the CCM similarity is not a MatMul of two DequantizeLinear outputs")
    operands = [dq.input[0] for dq in dequantized if dq is not None]
    zero_points = [dq.input[2] if len(dq.input) > 2 else "" for dq in dequantized if dq is not None]
    inputs = [*operands, *zero_points]
    while not inputs[-1]:  # optional zero points left out at the end
        inputs.pop()
    integer = onnx.helper.make_node("MatMulInteger", inputs, list(node.output), name=node.name)
    integer.metadata_props.extend(node.metadata_props)
    graph = model.graph
    graph.node.insert(list(graph.node).index(node), integer)
    graph.node.remove(node)
    consumers = _consumers(graph)
    for dq in dequantized:
        if dq is not None and not consumers.get(dq.output[0]):
            graph.node.remove(dq)
    for info in graph.value_info:
        if info.name == node.output[0]:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT32


def similarity_qdq_nodes(model: onnx.ModelProto) -> list[str]:
    """The Q/DQ nodes that quantize the similarity's inputs (the only ones the CCM may touch).

    The QuantizeLinear -> DequantizeLinear pairs on both inputs of the QDQ similarity, or the
    QuantizeLinear on both inputs of a MatMulInteger one; empty for a float CCM and for a
    similarity quantized on one side only (which no flavour writes).
    """
    node = similarity_node(model)
    if node is None:
        return []
    producers = {name: item for item in model.graph.node for name in item.output}
    chain = ("QuantizeLinear",) if node.op_type == "MatMulInteger" else _QDQ_CHAIN
    found: list[str] = []
    for name in node.input[:2]:
        pair: list[str] = []
        for op_type in reversed(chain):
            producer = producers.get(name)
            if producer is None or producer.op_type != op_type:
                return []
            pair.append(producer.name)
            name = producer.input[0]
        found.extend(pair)
    return found


def stray_ccm_qdq(model: onnx.ModelProto) -> list[str]:
    """Q/DQ nodes that feed a CCM node or read one of its outputs, but for the similarity's.

    An empty list means the CCM computes in float on float inputs, its similarity aside; the
    exporter refuses a graph where it is not (:func:`dpnet_export.torch_to_onnx.check_graph`).
    """
    members = [node for node in model.graph.node if CCM_SCOPE in node_scopes(node)]
    inputs = {name for node in members for name in node.input}
    outputs = {name for node in members for name in node.output}
    allowed = set(similarity_qdq_nodes(model))
    return sorted(
        node.name
        for node in model.graph.node
        if node.op_type in QDQ_OPS
        and node.name not in allowed
        and (set(node.output) & inputs or set(node.input) & outputs)
    )


def _consumers(graph: onnx.GraphProto) -> Mapping[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users
