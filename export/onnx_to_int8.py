"""FP32 graph + calibration feeds -> INT8 QDQ graphs for ONNX Runtime on CPU and for TensorRT.

Static post-training quantization with ONNX Runtime's ``quantize_static`` in QDQ format
(QuantizeLinear/DequantizeLinear pairs around the quantized ops, so the graph stays standard
ONNX), INT8 weights per channel on the output-channel axis (Conv axis 0), activation scales
from calibration. One calibration per graph serves both flavours (:data:`INT8_FLAVOURS`):

- ``ort`` (U8S8): asymmetric uint8 activations, symmetric int8 weights, int32 biases, Q/DQ on
  inputs and outputs so ONNX Runtime fuses them into QLinearConv/QLinearAdd/... kernels. On
  an AVX-512 VNNI CPU its u8 x s8 dot products run the trunk at 0.29x of FP32 where symmetric
  int8 activations (S8S8) take 0.73x (the trunk alone, ONNX Runtime 1.32, 2 cores).
- ``trt`` (S8S8): symmetric int8 activations and weights (every zero point 0, which TensorRT's
  explicit quantization requires), FP32 weights and biases behind a Q/DQ pair on the weights,
  Q/DQ on op inputs only: TensorRT folds the weight pair and places output scales itself
  (the placement NVIDIA's Model Optimizer makes for TensorRT).

Before quantizing, every BatchNormalization that follows a Conv is folded into its weights
(:func:`fold_batch_norm`): quantizing a Conv whose output still goes through a float
BatchNormalization would leave a Q/DQ round trip per layer.

What stays float (:func:`int8_float_nodes`): :func:`~dpnet_export.onnx_to_fp16.fp32_keep_list`
(the CCM, the discriminator, the PIM, every L2 normalisation, the nodes computed from the
support masks alone and the layout ops that carry them) and the classifier (``classifier``
scope: the 1x1 conv to the two logits whose ArgMax is the mask; quantizing it doubled the
mIoU delta and the flipped pixels of the trained tiny model). With ``int8_ccm`` (the
default) the CCM's similarity MatMul leaves that list and runs in INT8 too, each flavour its
own way (:mod:`dpnet_export.ccm_int8`); its ArgMax, gathers and one-hot MatMul stay as they
are. Nodes are chosen by the ``ccm``/scope metadata that ``torch.onnx`` writes, never by
name; ``python -m dpnet_bench.localize`` shows where each precision is lost, the
similarity's share included.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnx import numpy_helper

from dpnet_export.ccm_int8 import similarity_node, similarity_overrides, to_matmul_integer
from dpnet_export.onnx_to_fp16 import fp32_keep_list, nodes_in_scope
from dpnet_runtime import contract
from dpnet_runtime.backends.ort import OrtRunner
from dpnet_runtime.errors import ExportError, InputError, one_line

__all__ = [
    "CALIBRATION_METHODS",
    "FLOAT_SCOPES",
    "INT8_FLAVOURS",
    "Int8Flavour",
    "float32_to_int8",
    "fold_batch_norm",
    "int8_float_nodes",
]

logger = logging.getLogger(__name__)

CALIBRATION_METHODS: Final = ("minmax", "percentile")
"""Calibration methods, ``--calib-method``: ``minmax`` (the default: best mIoU parity, see
docs/export/int8.md) and ``percentile`` (99.999th percentile of a histogram).
``quantize_static``'s Entropy is left out: with its fixed 128 histogram bins and 128 quantized
bins it has one candidate threshold, the full range, and gives MinMax's scales (measured:
identical graphs)."""
FLOAT_SCOPES: Final = ("classifier",)
"""Scopes kept float besides ``fp32_keep_list``'s: the 1x1 classifier behind the mask's ArgMax."""
_ORT_METADATA: Final = ("onnx.infer", "onnx.quant.pre_process")


@dataclass(frozen=True)
class Int8Flavour:
    """How one runtime wants its QDQ graph.

    Attributes:
        backend: the runtime it is for (``ort``, ``trt``), as in ``contract.FORMATS``.
        activations: ``uint8`` (asymmetric) or ``int8`` (symmetric, zero point 0).
        op_types: the op types quantized (outside the float nodes).
        per_channel: one weight scale per output channel (Conv axis 0), else one per tensor.
        output_qdq: also quantize op outputs (ONNX Runtime's QLinear fusion needs them).
        quantize_bias: int32 biases behind a DequantizeLinear (``False``: FP32 biases).
        weight_qdq_pair: FP32 weights with a Q/DQ pair (``False``: INT8 initializers).
        similarity: how the CCM similarity runs in INT8 (:mod:`dpnet_export.ccm_int8`):
            ``matmul_integer`` (int32 scores) or ``qdq`` (Q/DQ pairs, float scores).
        support_keys: the type of the similarity's support keys, ``uint8`` (zero point 128)
            or ``int8``; the query keys are int8.
    """

    backend: str
    activations: str
    op_types: tuple[str, ...]
    per_channel: bool
    output_qdq: bool
    quantize_bias: bool
    weight_qdq_pair: bool
    similarity: str
    support_keys: str

    def ort_options(self, similarity: onnx.NodeProto | None = None) -> dict[str, Any]:
        """``quantize_static``'s ``extra_options`` for this flavour.

        Args:
            similarity: the CCM similarity node when it is quantized too: symmetric scales
                on its inputs, none on its output (the ArgMax read the scores).
        """
        options: dict[str, Any] = {
            "ActivationSymmetric": self.activations == "int8",
            "WeightSymmetric": True,
            "QuantizeBias": self.quantize_bias,
            "AddQDQPairToWeight": self.weight_qdq_pair,
            "QDQOpTypePerChannelSupportToAxis": {"Conv": 0},
            "QDQKeepRemovableActivations": False,
        }
        excluded = [] if self.output_qdq else list(self.op_types)
        if similarity is not None:
            excluded.append(similarity.op_type)
            options["TensorQuantOverrides"] = similarity_overrides(similarity, self.support_keys)
        if excluded:
            options["OpTypesToExcludeOutputQuantization"] = excluded
        return options


INT8_FLAVOURS: Final[dict[str, Int8Flavour]] = {
    flavour.backend: flavour
    for flavour in (
        Int8Flavour(
            "ort", "uint8",
            ("Conv", "Relu", "Add", "MaxPool", "Concat", "Resize", "AveragePool"),
            per_channel=True, output_qdq=True, quantize_bias=True, weight_qdq_pair=False,
            similarity="matmul_integer", support_keys="uint8",
        ),
        Int8Flavour(
            "trt", "int8", ("Conv", "Add", "MaxPool", "AveragePool"),
            per_channel=True, output_qdq=False, quantize_bias=False, weight_qdq_pair=True,
            similarity="qdq", support_keys="int8",
        ),
    )
}  # fmt: skip
"""Backend -> its flavour: the INT8 graphs of ``ort-int8`` and the source of ``trt-int8``."""


def float32_to_int8(
    model: onnx.ModelProto,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    method: str = "minmax",
    calibration: Mapping[str, Any] | None = None,
    flavours: Sequence[Int8Flavour] = tuple(INT8_FLAVOURS.values()),
    int8_ccm: bool = True,
) -> dict[str, onnx.ModelProto]:
    """INT8 QDQ copies of an FP32 graph, one per flavour, calibrated on ``feeds``.

    Args:
        model: an FP32 graph of :func:`dpnet_export.torch_to_onnx.export_onnx`.
        feeds: calibration inputs, one feed (input name -> array) per run; every input of
            ``model`` in each.
        method: one of :data:`CALIBRATION_METHODS`.
        calibration: what the feeds are (dataset, episodes, seed...), recorded as JSON in the
            ``META_CALIBRATION`` metadata with the method.
        flavours: the flavours to write (default: both).
        int8_ccm: also run the CCM's similarity MatMul in INT8 (:mod:`dpnet_export.ccm_int8`);
            ``False`` keeps the whole CCM float.

    Returns:
        backend -> new ``ModelProto`` with ``META_PRECISION`` ``int8`` and ``META_INT8_TARGET``
        the backend; ``model`` is untouched. The same feeds give byte-identical graphs.

    Raises:
        InputError: no feed, or an unknown method.
        ExportError: ONNX Runtime's quantizer failed.
    """
    if not feeds:
        raise InputError("no calibration episode: INT8 needs at least one (--calib-episodes)")
    if method not in CALIBRATION_METHODS:
        raise InputError(
            f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    folded = fold_batch_norm(model)
    similarity = similarity_node(folded) if int8_ccm else None
    float_nodes = int8_float_nodes(folded, int8_ccm=int8_ccm)
    if similarity is not None:
        # MatMul joins the quantized op types for the similarity alone.
        float_nodes += [
            node.name
            for node in folded.graph.node
            if node.op_type == "MatMul" and node.name not in (similarity.name, *float_nodes)
        ]
    recorded = json.dumps({**(calibration or {}), "method": method}, sort_keys=True)
    results: dict[str, onnx.ModelProto] = {}
    with tempfile.TemporaryDirectory(prefix="dpnet-int8-") as tmp:
        folder = Path(tmp)
        source = folder / "folded.onnx"
        onnx.save(_preprocessed(folded), str(source))
        for flavour in flavours:
            # The first flavour calibrates and writes the ranges; the others reuse them.
            quantized = _quantize(
                source,
                folder,
                flavour,
                feeds,
                (float_nodes, similarity),
                method,
                folder / "ranges.json",
            )
            _set_properties(
                quantized,
                {
                    contract.META_PRECISION: "int8",
                    contract.META_INT8_TARGET: flavour.backend,
                    contract.META_CALIBRATION: recorded,
                },
            )
            results[flavour.backend] = quantized
    return results


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every Conv -> BatchNormalization pair folded into the Conv.

    A pair folds when the Conv's output feeds only the BatchNormalization and every weight is
    an initializer: ``W' = W * g / sqrt(var + eps)`` per output channel and
    ``b' = (b - mean) * g / sqrt(var + eps) + beta``. Convs that share their weights and
    normalisation (the support and query passes of the trunk) share the folded weights.
    Other nodes keep their names and metadata.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folds: dict[tuple[str, ...], list[onnx.TensorProto]] = {}
    removed: list[onnx.NodeProto] = []
    for node in graph.node:
        conv = producers.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or consumers[node.input[0]] != 1:
            continue
        inputs = tuple(name for name in (*conv.input[1:], *node.input[1:]) if name)
        if len(node.output) != 1 or not all(name in weights for name in inputs):
            continue
        key = (*inputs, str(_epsilon(node)))
        if key not in folds:
            folds[key] = _folded_weights(conv, node, weights, suffix=f".folded{len(folds)}")
        del conv.input[1:]
        conv.input.extend(tensor.name for tensor in folds[key])
        conv.output[0] = node.output[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    graph.initializer.extend(tensor for pair in folds.values() for tensor in pair)
    used = {name for node in graph.node for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # torch.onnx lists initializers in value_info; shape inference rebuilds what is needed.
    del graph.value_info[:]
    return folded


def int8_float_nodes(model: onnx.ModelProto, *, int8_ccm: bool = False) -> list[str]:
    """Names of the nodes that stay float in the INT8 graphs (see the module docstring).

    Args:
        model: an FP32 graph.
        int8_ccm: leave the CCM's similarity MatMul out of the list (it runs in INT8).
    """
    keep = set(fp32_keep_list(model))
    keep.update(node.name for scope in FLOAT_SCOPES for node in nodes_in_scope(model, scope))
    similarity = similarity_node(model) if int8_ccm else None
    if similarity is not None:
        keep.discard(similarity.name)
    return sorted(keep)


def _folded_weights(
    conv: onnx.NodeProto,
    norm: onnx.NodeProto,
    weights: Mapping[str, onnx.TensorProto],
    *,
    suffix: str,
) -> list[onnx.TensorProto]:
    gamma, beta, mean, var = (numpy_helper.to_array(weights[name]) for name in norm.input[1:5])
    weight = numpy_helper.to_array(weights[conv.input[1]])
    bias = (
        numpy_helper.to_array(weights[conv.input[2]])
        if len(conv.input) > 2 and conv.input[2]
        else np.zeros(weight.shape[0], dtype=np.float32)
    )
    factor = gamma / np.sqrt(var + _epsilon(norm))
    shape = (-1,) + (1,) * (weight.ndim - 1)
    return [
        numpy_helper.from_array(
            (weight * factor.reshape(shape)).astype(np.float32), f"{conv.input[1]}{suffix}"
        ),
        numpy_helper.from_array(
            ((bias - mean) * factor + beta).astype(np.float32), f"{conv.input[1]}{suffix}_bias"
        ),
    ]


def _epsilon(norm: onnx.NodeProto) -> float:
    return next((attr.f for attr in norm.attribute if attr.name == "epsilon"), 1e-5)


def _quantize(
    source: Path,
    folder: Path,
    flavour: Int8Flavour,
    feeds: Sequence[Mapping[str, np.ndarray]],
    excluded: tuple[list[str], onnx.NodeProto | None],
    method: str,
    ranges: Path,
) -> onnx.ModelProto:
    float_nodes, similarity = excluded
    op_types = [*flavour.op_types, *([similarity.op_type] if similarity is not None else [])]
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else dict(item)

    target = folder / f"{flavour.backend}.onnx"
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    activations = QuantType.QUInt8 if flavour.activations == "uint8" else QuantType.QInt8
    chatter = io.StringIO()  # the histogram calibrators print their progress to stdout
    try:
        with contextlib.redirect_stdout(chatter):
            quantize_static(
                str(source),
                str(target),
                _Feeds(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=flavour.per_channel,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=float_nodes,
                calibrate_method=methods[method],
                extra_options=flavour.ort_options(similarity),
                calibration_cache_path=str(ranges),
            )
    except (
        ValueError,
        RuntimeError,
        onnx.checker.ValidationError,
        *OrtRunner.backend_errors,
    ) as exc:
        message = f"ONNX Runtime's quantizer failed ({flavour.backend} INT8): {one_line(exc, 200)}"
        raise ExportError(message, str(exc)) from exc
    logger.debug("quantize_static (%s): %s", flavour.backend, chatter.getvalue())
    quantized = onnx.load(str(target))
    for key in _ORT_METADATA:
        _remove_property(quantized, key)
    if similarity is not None and flavour.similarity == "matmul_integer":
        to_matmul_integer(quantized)
    if similarity is not None and flavour.similarity == "qlinear_matmul":
        from dpnet_export.ccm_int8 import to_qlinear_matmul

        to_qlinear_matmul(quantized)
    return quantized


def _preprocessed(model: onnx.ModelProto) -> onnx.ModelProto:
    # ONNX Runtime's tag for a model its quantization pre-processing has seen: the Conv/BN
    # folding above is that pre-processing (quantize_static warns otherwise). The tags are
    # removed from the result.
    tagged = onnx.ModelProto()
    tagged.CopyFrom(model)
    tagged.metadata_props.add(key=_ORT_METADATA[1], value="onnxruntime.quant")
    return tagged


def _set_properties(model: onnx.ModelProto, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        _remove_property(model, key)
        model.metadata_props.add(key=key, value=value)


def _remove_property(model: onnx.ModelProto, key: str) -> None:
    for prop in list(model.metadata_props):
        if prop.key == key:
            model.metadata_props.remove(prop)
