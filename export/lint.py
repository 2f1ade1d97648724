"""TensorRT-compatibility lint of an ONNX graph (``dpnet-export check``).

The lint needs neither TensorRT nor a GPU: it compares the graph with the TensorRT ONNX
parser's operator table, packaged as ``data/tensorrt_onnx_operators.json`` (its source,
commit and how to read it are in ``data/tensorrt_onnx_operators.md``), and checks the hazards
the table cannot express:

- an op that is missing from the table, marked unsupported, or in ``not_listed`` is an error
  (the parser would look for a plugin of that name);
- control flow, ops with data-dependent output shapes, TopK and Scatter* are errors: dpnet's
  design forbids them outright (docs/design.md#deployment-precision;
  :data:`dpnet_export.op_rules.FORBIDDEN_OPS`, the exporter's policy too);
- INT64 or BOOL graph inputs and outputs are errors (TensorRT I/O is float, int32 or uint8 in
  dpnet's contract), and a UINT8 tensor that is not graph I/O is an error (the parser accepts
  UINT8 only at the boundary);
- an input that must be known at build time is an error when it is not: Reduce* axes must be
  an initializer or Constant (the table: "must be an initializer"); Squeeze/Unsqueeze axes,
  the CumSum axis and the OneHot depth must *resolve* to a constant (the table: "must resolve
  to a build-time constant"), so a chain of ops over constants (Identity, Cast, Concat...) and
  the Shape of a tensor whose dims are all static count as constant too;
- pooling with ``ceil_mode=1`` whose last window hangs over the border (a partial window) is an
  error for AveragePool (runtimes disagree on its divisor: ONNX Runtime follows PyTorch, the
  ONNX reference implementation does not) and a warning for MaxPool; unknown spatial sizes
  give a warning;
- a QuantizeLinear/DequantizeLinear that TensorRT's explicit quantization refuses (asymmetric,
  UINT8 or INT32, computed scales, per-channel off a weight's output-channel axis) is an error
  (:mod:`dpnet_export.lint_qdq`);
- any other table restriction is a warning (one per op type), a tensor type outside the op's
  type list is a warning, and the importer-code notes are info.

Per target: a graph for ``trt`` (the default, and every graph an engine is built from) gets
every rule; a graph for ``ort`` only (the U8S8 INT8 copies ``*_int8.onnx``, metadata
``int8_target = ort``) is not held to TensorRT's Q/DQ and intermediate-UINT8 rules, which its
asymmetric uint8 activations break by design, and ops TensorRT's parser lacks (its INT8
similarity's MatMulInteger) are info there, not errors; its report says so in an info finding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import onnx
from onnx import TensorProto

from dpnet_export.lint_qdq import QDQ_OPS, qdq_problems
from dpnet_export.lint_static import partial_window_axes, resolvable_names, static_shapes
from dpnet_export.op_rules import FORBIDDEN_OPS
from dpnet_runtime.contract import META_INT8_TARGET
from dpnet_runtime.errors import InputError, ModelFileError

__all__ = [
    "LINT_TARGETS",
    "LintFinding",
    "LintReport",
    "Severity",
    "lint_onnx",
    "load_operator_table",
]

Severity = Literal["error", "warning", "info"]
LINT_TARGETS: Final = ("trt", "ort")
"""The runtimes a graph can be linted for: TensorRT (every rule) or ONNX Runtime only."""
_ORT_NOTE: Final = (
    "linted for ONNX Runtime only (target ort): TensorRT's Q/DQ and intermediate-UINT8 rules "
    "are not applied; TensorRT builds its own flavour of this graph"
)

_TABLE_FILE = "tensorrt_onnx_operators.json"
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Inputs (by position) that must resolve to a build-time constant (computed from constants).
_RESOLVABLE_INPUTS: Mapping[str, tuple[int, str]] = {
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "CumSum": (1, "axis"),
    "OneHot": (1, "depth"),
}
_CEIL_POOLING_SEVERITY: Mapping[str, Severity] = {"AveragePool": "error", "MaxPool": "warning"}
# Restrictions the lint verifies itself: no generic warning for them.
_VERIFIED_RESTRICTION_OPS = frozenset(_RESOLVABLE_INPUTS) | QDQ_OPS
_IO_FORBIDDEN_TYPES = {TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL"}
_TABLE_TYPE_NAMES: Mapping[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.UINT8: "UINT8",
    TensorProto.INT8: "INT8",
}


@dataclass(frozen=True)
class LintFinding:
    """One lint result.

    Attributes:
        severity: ``"error"`` (the engine build will fail or the graph breaks a dpnet rule),
            ``"warning"`` (a restriction to check by hand) or ``"info"``.
        node: node name, or the tensor name for graph I/O findings.
        op_type: the node's op type (``""`` for graph I/O findings).
        message: what is wrong and what to do.
    """

    severity: Severity
    node: str
    op_type: str
    message: str


@dataclass(frozen=True)
class LintReport:
    """All findings for one graph, errors first.

    Attributes:
        model: the file linted (or ``"<in-memory model>"``).
        table_version: the TensorRT version the operator table describes.
        node_count: number of nodes checked (subgraphs included).
        findings: errors, then warnings, then info.
        target: ``trt`` (every rule) or ``ort`` (ONNX Runtime only: no TensorRT Q/DQ rules).
    """

    model: str
    table_version: str
    node_count: int
    findings: tuple[LintFinding, ...]
    target: str = "trt"

    @property
    def errors(self) -> tuple[LintFinding, ...]:
        """Findings of severity ``error``."""
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[LintFinding, ...]:
        """Findings of severity ``warning``."""
        return tuple(f for f in self.findings if f.severity == "warning")

    @property
    def passed(self) -> bool:
        """True when there is no error (warnings and info do not fail the check)."""
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the dataclass fields plus ``passed`` and counts."""
        data = asdict(self)
        data.update(
            passed=self.passed, error_count=len(self.errors), warning_count=len(self.warnings)
        )
        return data


@cache
def load_operator_table() -> dict[str, Any]:
    """The packaged TensorRT ONNX operator table (see ``data/tensorrt_onnx_operators.md``)."""
    text = resources.files("dpnet_export").joinpath("data", _TABLE_FILE).read_text("utf-8")
    table: dict[str, Any] = json.loads(text)
    return table


def lint_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto, target: str | None = None
) -> LintReport:
    """Lint an ONNX graph for the TensorRT ONNX parser.

    Args:
        model: path of an ``.onnx`` file (external data is not loaded) or a loaded model.
        target: ``trt`` or ``ort`` (:data:`LINT_TARGETS`); ``None`` reads the graph's
            ``int8_target`` metadata, and takes ``trt`` without it.

    Returns:
        The :class:`LintReport`; ``report.passed`` is False when any error was found.

    Raises:
        ModelFileError: the file is missing or is not a readable ONNX model.
        InputError: an unknown target.

    >>> report = lint_onnx("out/dpnet.onnx")  # doctest: +SKIP
    >>> report.passed  # doctest: +SKIP
    True
    """
    name, proto = _load(model)
    target = target or _declared_target(proto)
    if target not in LINT_TARGETS:
        raise InputError(f"lint target must be one of {', '.join(LINT_TARGETS)}, got {target!r}")
    tensorrt = target == "trt"
    table = load_operator_table()
    notes = [] if tensorrt else [LintFinding("info", "", "", _ORT_NOTE)]
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except onnx.shape_inference.InferenceError as exc:
        # Types only feed the dtype checks; the op checks stand without them.
        message = f"shape inference failed, dtype checks limited: {exc}"
        notes.append(LintFinding("info", "", "", " ".join(message.split())))
    graph = proto.graph
    types = _tensor_types(graph)
    shapes = static_shapes(graph)
    nodes = list(_walk(graph))
    findings = [
        *notes,
        *_io_findings(graph),
        *_node_findings(nodes, table, tensorrt=tensorrt),
        *_build_time_input_findings(nodes, _constant_names(graph), shapes),
        *_ceil_pooling_findings(nodes, shapes),
        *(_uint8_findings(graph, nodes, types) if tensorrt else ()),
        *(LintFinding("error", *p) for p in (qdq_problems(graph, types) if tensorrt else ())),
        *_restriction_findings(nodes, table),
        *_type_findings(nodes, table, types),
        *_code_note_findings(nodes, table),
    ]
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity])
    version = str(table["source"]["tensorrt_version"])
    return LintReport(name, version, len(nodes), tuple(findings), target)


def _declared_target(proto: onnx.ModelProto) -> str:
    # The INT8 flavours say which runtime they are for; every other graph is a TensorRT source.
    declared = {prop.key: prop.value for prop in proto.metadata_props}.get(META_INT8_TARGET)
    return declared if declared in LINT_TARGETS else "trt"


def _load(model: str | os.PathLike[str] | onnx.ModelProto) -> tuple[str, onnx.ModelProto]:
    if isinstance(model, onnx.ModelProto):
        return "<in-memory model>", model
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(
            f"ONNX file {path} does not exist (export one with `dpnet-export onnx`)"
        )
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it"
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelFileError(f"{path} is not an ONNX model (no graph found); re-export it")
    return str(path), proto


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, subgraphs (Loop/If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            for sub in attr.graphs:
                yield from _walk(sub)


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "<unnamed>")


def _constant_names(graph: onnx.GraphProto) -> frozenset[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in _walk(graph) if node.op_type == "Constant" for out in node.output)
    return frozenset(names)


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {init.name: init.data_type for init in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _io_findings(graph: onnx.GraphProto) -> Iterator[LintFinding]:
    initializers = {init.name for init in graph.initializer}
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for info in infos:
            elem = info.type.tensor_type.elem_type
            if info.name in initializers or elem not in _IO_FORBIDDEN_TYPES:
                continue
            yield LintFinding(
                "error",
                info.name,
                "",
                f"graph {kind} {info.name!r} is {_IO_FORBIDDEN_TYPES[elem]}: dpnet engines take "
                "float32, int32 or uint8 I/O; cast inside the graph before the export",
            )


def _node_findings(
    nodes: list[onnx.NodeProto], table: Mapping[str, Any], *, tensorrt: bool
) -> Iterator[LintFinding]:
    # An ONNX Runtime-only graph may hold ops TensorRT's parser lacks (MatMulInteger): noted.
    missing: Severity = "error" if tensorrt else "info"
    operators: Mapping[str, Any] = table["operators"]
    not_listed = set(table["not_listed"])
    for node in nodes:
        op = node.op_type
        label = _label(node)
        if node.domain not in _DEFAULT_DOMAINS:
            yield LintFinding(
                "error", label, op, f"custom domain {node.domain!r}: needs a TensorRT plugin"
            )
        elif op in FORBIDDEN_OPS:
            yield LintFinding("error", label, op, f"{op} is forbidden: {FORBIDDEN_OPS[op]}")
        elif op in not_listed or op not in operators:
            yield LintFinding(missing, label, op, f"{op} has no row in the TensorRT parser table")
        elif not operators[op]["supported"]:
            yield LintFinding(missing, label, op, f"{op} is not supported by the TensorRT parser")


def _uint8_findings(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], types: Mapping[str, int]
) -> Iterator[LintFinding]:
    boundary = {info.name for info in (*graph.input, *graph.output)}
    for node in nodes:
        for name in node.output:
            if types.get(name) == TensorProto.UINT8 and name not in boundary:
                yield LintFinding(
                    "error",
                    _label(node),
                    node.op_type,
                    f"intermediate tensor {name!r} is UINT8: TensorRT accepts UINT8 only as "
                    "graph input or output; compute in int32 or float",
                )


def _first_by_op(nodes: list[onnx.NodeProto]) -> dict[str, tuple[onnx.NodeProto, int]]:
    firsts: dict[str, tuple[onnx.NodeProto, int]] = {}
    for node in nodes:
        first, count = firsts.get(node.op_type, (node, 0))
        firsts[node.op_type] = (first, count + 1)
    return firsts


def _restriction_findings(
    nodes: list[onnx.NodeProto], table: Mapping[str, Any]
) -> Iterator[LintFinding]:
    operators: Mapping[str, Any] = table["operators"]
    for op, (first, count) in _first_by_op(nodes).items():
        row = operators.get(op)
        verified = op in _VERIFIED_RESTRICTION_OPS or op.startswith("Reduce")
        if row is None or not row["restrictions"] or verified or op in FORBIDDEN_OPS:
            continue
        yield LintFinding(
            "warning",
            _label(first),
            op,
            f"{count} node(s); TensorRT restriction: {row['restrictions']}",
        )


def _type_findings(
    nodes: list[onnx.NodeProto], table: Mapping[str, Any], types: Mapping[str, int]
) -> Iterator[LintFinding]:
    operators: Mapping[str, Any] = table["operators"]
    seen: set[tuple[str, str]] = set()
    for node in nodes:
        row = operators.get(node.op_type)
        if row is None or not row["types"]:
            continue
        # The table's types describe the data input; later inputs are indices, shapes or axes.
        name = node.input[0] if node.input else ""
        type_name = _TABLE_TYPE_NAMES.get(types.get(name, -1))
        if type_name is None or type_name in row["types"] or (node.op_type, type_name) in seen:
            continue
        seen.add((node.op_type, type_name))
        yield LintFinding(
            "warning",
            _label(node),
            node.op_type,
            f"input {name!r} is {type_name}; the table lists {', '.join(row['types'])}",
        )


def _code_note_findings(
    nodes: list[onnx.NodeProto], table: Mapping[str, Any]
) -> Iterator[LintFinding]:
    notes: Mapping[str, str] = table["importer_code_notes"]["operators"]
    for op, (first, _) in _first_by_op(nodes).items():
        if op in notes:
            yield LintFinding("info", _label(first), op, f"importer note (10.1 code): {notes[op]}")


def _build_time_input_findings(
    nodes: list[onnx.NodeProto],
    constants: frozenset[str],
    shapes: Mapping[str, tuple[int | None, ...]],
) -> Iterator[LintFinding]:
    resolvable = resolvable_names(nodes, constants, shapes)
    for node in nodes:
        op = node.op_type
        strict = op.startswith("Reduce")
        index, what = (1, "axes") if strict else _RESOLVABLE_INPUTS.get(op, (-1, ""))
        if index < 0 or len(node.input) <= index or not node.input[index]:
            continue
        name = node.input[index]
        if strict and name not in constants:
            fix = "make them an initializer or Constant"
        elif not strict and name not in resolvable:
            fix = "compute them from initializers or Constants only"
        else:
            continue
        yield LintFinding(
            "error",
            _label(node),
            op,
            f"{op} {what} come from computed tensor {name!r}; TensorRT needs them at build "
            f"time: {fix}",
        )


def _ceil_pooling_findings(
    nodes: list[onnx.NodeProto], shapes: Mapping[str, tuple[int | None, ...]]
) -> Iterator[LintFinding]:
    for node in nodes:
        severity = _CEIL_POOLING_SEVERITY.get(node.op_type)
        if severity is None or not node.input:
            continue
        axes = partial_window_axes(node, shapes.get(node.input[0]))
        if axes == []:
            continue
        if axes is None:
            yield LintFinding(
                "warning",
                _label(node),
                node.op_type,
                "ceil_mode=1 on an input of unknown spatial size: cannot prove every window "
                "is full; export with static spatial sizes",
            )
            continue
        yield LintFinding(
            severity,
            _label(node),
            node.op_type,
            f"ceil_mode=1 leaves a partial last window on spatial axes {axes}: runtimes "
            "disagree on its divisor; zero-pad to a multiple of the kernel and pool with "
            "ceil_mode=0 (see dpnet.model.msf.ceil_avg_pool2d)",
        )
