"""Static facts behind two lint rules: build-time constants and full pooling windows.

Both are pure functions of the graph (after ONNX shape inference), kept apart from
:mod:`dpnet_export.lint`, which turns them into findings.

- :func:`resolvable_names`: the tensors whose values are known when TensorRT builds the
  engine. The parser table says Squeeze/Unsqueeze axes (and the CumSum axis, OneHot depth)
  "must resolve to a build-time constant": an initializer, a Constant, any deterministic op
  whose inputs all resolve (Identity, Cast, Concat, Reshape... over constants), and the Shape
  of a tensor whose dims are all static.
- :func:`partial_window_axes`: the spatial axes on which a ``ceil_mode=1`` pooling node has a
  last window that hangs over the (padded) border, where runtimes disagree on the divisor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx

__all__ = ["partial_window_axes", "resolvable_names", "static_shapes"]

# Ops whose output is not a function of their inputs: never a build-time constant.
_RANDOM_PREFIXES = ("Random", "Bernoulli", "Multinomial")


def static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[int | None, ...]]:
    """Shapes known after shape inference: ``None`` for a dynamic or unknown dim."""
    shapes: dict[str, tuple[int | None, ...]] = {
        init.name: tuple(int(dim) for dim in init.dims) for init in graph.initializer
    }
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            shapes[info.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim
            )
    return shapes


def resolvable_names(
    nodes: Sequence[onnx.NodeProto],
    constants: frozenset[str],
    shapes: Mapping[str, tuple[int | None, ...]],
) -> frozenset[str]:
    """Tensors whose values resolve to constants at build time (``nodes`` in graph order).

    Args:
        nodes: every node, producers before consumers (ONNX requires topological order).
        constants: initializer and Constant output names.
        shapes: from :func:`static_shapes`.
    """
    known = set(constants)
    for node in nodes:
        if node.op_type.startswith(_RANDOM_PREFIXES):
            continue
        if node.op_type == "Shape":
            shape = shapes.get(node.input[0]) if node.input else None
            resolves = shape is not None and all(dim is not None for dim in shape)
        else:
            resolves = all(name in known for name in node.input if name)
        if resolves:
            known.update(name for name in node.output if name)
    return frozenset(known)


def partial_window_axes(
    node: onnx.NodeProto, input_shape: tuple[int | None, ...] | None
) -> list[int] | None:
    """Spatial axes (0-based, after N and C) where a ceil-mode pooling window is partial.

    Returns:
        ``[]`` when every window is full (or ``ceil_mode`` is 0), the partial axes otherwise,
        ``None`` when a spatial size is unknown and ``ceil_mode`` is 1.
    """
    attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
    if not attrs.get("ceil_mode", 0):
        return []
    kernel: list[int] = list(attrs.get("kernel_shape", []))
    spatial = list(input_shape[2:]) if input_shape is not None else []
    if len(spatial) != len(kernel) or any(dim is None for dim in spatial):
        return None
    rank = len(kernel)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * 2 * rank))
    partial = []
    for axis, size in enumerate(int(dim or 0) for dim in spatial):
        padded = size + pads[axis] + pads[axis + rank]
        reach = (kernel[axis] - 1) * dilations[axis] + 1
        span = padded - reach
        # A last ceil-mode window that would start in the end padding is dropped (ONNX).
        last_start = math.ceil(span / strides[axis]) * strides[axis]
        if span >= 0 and span % strides[axis] and last_start < size + pads[axis]:
            partial.append(axis)
    return partial
