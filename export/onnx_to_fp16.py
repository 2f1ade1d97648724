"""Mixed-precision copy of an exported FP32 graph (``--precision fp16``,
docs/design.md#deployment-precision).

Weights and activations become FP16 through onnxruntime's converter
(``onnxruntime.transformers.float16.convert_float_to_float16``); graph inputs and outputs keep
their FP32 types. The keep-list, what stays FP32 and why:

- every node under the name scope ``ccm`` (the similarity MatMul over 1024-d features and both
  ArgMax of the cycle: FP16 rounding would flip near-ties and change the confident set C);
- the discriminator (``discriminator`` scope): h is compared with beta, a hard threshold;
- the PIM (``pim`` scope): its z-score (Eq. 4) divides by a standard deviation over channels,
  and the rest of it is [B, C] vector algebra that costs nothing in FP32;
- every L2 normalisation (ReduceL2 and the Greater/Where/Div that apply it): a sum of 1024
  squares overflows FP16's 65504 for activations above about 8;
- every ArgMax and Softmax op wherever it is (the mask's argmax of the logits included);
- the nodes computed from ``support_masks`` alone (mask resize and the fg > 0.5 threshold: a
  pixel average of exactly 0.5 must not flip by rounding);
- the Reshape/Transpose/Unsqueeze/... that carry a kept tensor onward (the normalised features
  on their way into the CCM), which in FP16 would round it between two FP32 nodes.

FP16 rounding still reaches the CCM through the trunk (the cosine features are FP16 activations):
on the random-trunk tiny model about 6 % of the confident set flips, mIoU moves by < 0.3 pt.

Nodes are found by the ``pkg.torch.onnx.name_scopes`` metadata that ``torch.onnx.export``
(dynamo) writes on each node; the network is the wrapper's attribute ``model``, so a scope
reads ``model.ccm``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Final

import onnx

from dpnet_runtime.contract import META_PRECISION, SUPPORT_MASKS

__all__ = [
    "CCM_SCOPE",
    "FP32_OPS",
    "FP32_SCOPES",
    "float32_to_float16",
    "fp32_keep_list",
    "node_scopes",
    "nodes_in_scope",
]

CCM_SCOPE: Final = "ccm"
FP32_SCOPES: Final = (CCM_SCOPE, "discriminator", "pim")
FP32_OPS: Final = ("ArgMax", "Softmax", "ReduceL2")
_SCOPES_KEY: Final = "pkg.torch.onnx.name_scopes"
# The ops of l2_normalize after its ReduceL2: x / Where(norm > eps, norm, 1).
_L2_TAIL_OPS: Final = frozenset({"Greater", "Where", "Div"})
_LAYOUT_OPS: Final = frozenset(
    {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Expand"}
)


def node_scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The module path of a node as names, e.g. ``("model", "ccm")`` for ``model.ccm``."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            entries = ast.literal_eval(prop.value)
            # The list holds the nested scopes ('', 'model', 'model.ccm', op name): the longest
            # module path before the op's own name is the node's module.
            modules = entries[1:-1]
            return tuple(modules[-1].split(".")) if modules else ()
    return ()


def nodes_in_scope(model: onnx.ModelProto, scope: str) -> list[onnx.NodeProto]:
    """Top-level graph nodes whose module path contains the attribute name ``scope``."""
    return [node for node in model.graph.node if scope in node_scopes(node)]


def fp32_keep_list(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that stay FP32 (see the module docstring)."""
    keep = {node.name for scope in FP32_SCOPES for node in nodes_in_scope(model, scope)}
    keep.update(node.name for node in _l2_normalize_nodes(model.graph.node))
    keep.update(node.name for node in _mask_only_nodes(model.graph))
    keep.update(node.name for node in _layout_successors(model.graph, keep))
    return sorted(keep)


def float32_to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A mixed-precision copy of ``model`` with FP32 I/O; ``META_PRECISION`` set to ``fp16``.

    Args:
        model: an FP32 graph written by :func:`dpnet_export.torch_to_onnx.export_onnx`.

    Returns:
        A new ``ModelProto``; ``model`` is untouched.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted: onnx.ModelProto = convert_float_to_float16(
        _copy(model),
        keep_io_types=True,
        op_block_list=list(FP32_OPS),
        node_block_list=fp32_keep_list(model),
        disable_shape_infer=False,
    )
    # The converter appends the FP32 -> FP16 casts of the inputs after their consumers.
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)
    _set_property(converted, META_PRECISION, "fp16")
    return converted


def _l2_normalize_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    nodes = list(nodes)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type != "ReduceL2":
            continue
        frontier = list(node.output)
        # Two hops reach the Div: ReduceL2 -> Greater -> Where -> Div (the norm feeds both).
        for _ in range(3):
            nxt = [
                c for name in frontier for c in consumers.get(name, []) if c.op_type in _L2_TAIL_OPS
            ]
            found.extend(nxt)
            frontier = [out for c in nxt if c.op_type != "Div" for out in c.output]
    return found


def _mask_only_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    # Nodes computed from the support masks and constants alone (graph nodes are in
    # topological order, as torch.onnx writes them).
    constants = {tensor.name for tensor in graph.initializer}
    derived = {SUPPORT_MASKS}
    found: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        data = [name for name in node.input if name and name not in constants]
        if data and all(name in derived for name in data):
            derived.update(node.output)
            found.append(node)
    return found


def _layout_successors(graph: onnx.GraphProto, keep: set[str]) -> list[onnx.NodeProto]:
    # Reshapes and transposes that move a kept FP32 tensor (the normalised features on their
    # way into the CCM) stay FP32 too: in FP16 they would round it between two FP32 nodes.
    fp32_tensors = {out for node in graph.node if node.name in keep for out in node.output}
    found: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type in _LAYOUT_OPS and node.name not in keep and node.input[0] in fp32_tensors:
            fp32_tensors.update(node.output)
            found.append(node)
    return found


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    # torch.onnx lists initializers in value_info too; the converter keeps the initializers of
    # blocked nodes FP32 but relabels those entries FP16. Shape inference rebuilds value_info.
    del copy.graph.value_info[:]
    return copy


def _set_property(model: onnx.ModelProto, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
