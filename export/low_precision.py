"""The converters of ``contract.FORMATS``: FP32 graphs -> the graphs of another precision.

Every row of the format table whose graphs are not the FP32 export names its converter
(``Format.converter``, ``"module:function"``); :func:`low_precision_graphs` calls each once per
graph role for all the backends that share it, so one calibration serves the ONNX Runtime and
the TensorRT INT8 flavours alike. A converter is a :data:`Converter`: it takes an FP32 graph and a
:class:`ConversionRequest` and returns one graph per requested backend. Adding a precision is
a row of the table plus its converter; nothing here names a precision.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import onnx

from dpnet_export.calibration import CalibrationSet, role_feeds
from dpnet_export.onnx_to_fp16 import float32_to_float16
from dpnet_export.onnx_to_int8 import INT8_FLAVOURS, float32_to_int8
from dpnet_runtime import contract
from dpnet_runtime.contract import FORMATS, GRAPHS, SUPPORT, Format

__all__ = [
    "ConversionRequest",
    "Converter",
    "fp16_graphs",
    "int8_graphs",
    "load_converter",
    "low_precision_graphs",
]


@dataclass(frozen=True)
class ConversionRequest:
    """What a converter makes for one graph role.

    Attributes:
        role: ``episode``, ``support`` or ``query``.
        backends: the backends whose graphs to return (``ort``, ``trt``).
        calibration: the calibration episodes (for a ``calibrated`` row), else ``None``.
        fp32_support: the FP32 support graph (the query graph calibrates on its cache).
        int8_ccm: INT8 converters quantize the CCM's similarity MatMul too
            (:mod:`dpnet_export.ccm_int8`; ``dpnet-export onnx --int8-ccm/--no-int8-ccm`).
    """

    role: str
    backends: tuple[str, ...]
    calibration: CalibrationSet | None
    fp32_support: onnx.ModelProto
    int8_ccm: bool = True


Converter = Callable[[onnx.ModelProto, ConversionRequest], Mapping[str, onnx.ModelProto]]
"""FP32 graph, request -> backend -> converted graph (``META_PRECISION`` is set by the caller)."""


def fp16_graphs(fp32: onnx.ModelProto, request: ConversionRequest) -> dict[str, onnx.ModelProto]:
    """The mixed-precision copy (:func:`~dpnet_export.onnx_to_fp16.float32_to_float16`), one
    graph for every backend: ONNX Runtime runs it, TensorRT builds it strongly typed."""
    converted = float32_to_float16(fp32)
    return {backend: converted for backend in request.backends}


def int8_graphs(fp32: onnx.ModelProto, request: ConversionRequest) -> dict[str, onnx.ModelProto]:
    """The calibrated INT8 QDQ copies (:func:`~dpnet_export.onnx_to_int8.float32_to_int8`), one
    flavour per backend from one calibration: U8S8 for ONNX Runtime, S8S8 for TensorRT.

    Raises:
        RuntimeError: called without calibration episodes (a ``calibrated`` row must get them).
    """
    if request.calibration is None:
        raise RuntimeError("int8_graphs needs calibration episodes")
    calibration = request.calibration
    feeds = role_feeds(calibration.feeds, request.role, request.fp32_support)
    return float32_to_int8(
        fp32,
        feeds,
        method=calibration.options.method,
        calibration=calibration.options.describe(),
        flavours=[INT8_FLAVOURS[backend] for backend in request.backends],
        int8_ccm=request.int8_ccm,
    )


def load_converter(spec: str) -> Converter:
    """The function a row's ``converter`` names (``"module:function"``).

    Raises:
        RuntimeError: the name does not resolve (a broken row of ``contract.FORMATS``).
    """
    module, _, name = spec.partition(":")
    try:
        found: Converter = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"contract.FORMATS names converter {spec!r}, which is missing") from exc
    return found


def low_precision_graphs(
    fp32: Mapping[str, onnx.ModelProto],
    precision: str,
    calibration: CalibrationSet | None,
    report: Callable[[str], None],
    *,
    int8_ccm: bool = True,
) -> dict[str, onnx.ModelProto]:
    """Every ONNX file of ``precision``'s rows: their own copies and the engines' sources.

    Args:
        fp32: role -> the FP32 graph.
        precision: one of :func:`dpnet_runtime.formats.converted_precisions`.
        calibration: the calibration episodes when a row of ``precision`` is ``calibrated``.
        report: progress lines.
        int8_ccm: passed to the converters (:attr:`ConversionRequest.int8_ccm`).

    Returns:
        File name -> graph, each stamped with ``META_PRECISION`` = ``precision``.
    """
    rows = [row for row in FORMATS.values() if row.precision == precision and row.converter]
    by_converter: dict[str, list[Format]] = {}
    for row in rows:
        by_converter.setdefault(row.converter, []).append(row)
    graphs: dict[str, onnx.ModelProto] = {}
    for spec, group in by_converter.items():
        converter = load_converter(spec)
        backends = tuple(dict.fromkeys(row.backend for row in group))
        for role in GRAPHS:
            report(f"converting {GRAPHS[role].file} to {precision} for {', '.join(backends)}")
            request = ConversionRequest(role, backends, calibration, fp32[SUPPORT], int8_ccm)
            converted = converter(fp32[role], request)
            for row in group:
                graph = converted[row.backend]
                if graph is fp32[role]:  # never restamp the FP32 graph itself
                    graph = onnx.ModelProto()
                    graph.CopyFrom(fp32[role])
                _stamp(graph, precision)
                graphs[row.onnx_name(role)] = graph
    return graphs


def _stamp(graph: onnx.ModelProto, precision: str) -> None:
    # Every copy says what it holds, whatever its converter wrote: the runtime checks it.
    props = {prop.key: prop.value for prop in graph.metadata_props}
    onnx.helper.set_model_props(graph, {**props, contract.META_PRECISION: precision})
