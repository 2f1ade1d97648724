"""DPNet checkpoint -> ONNX graphs that follow :mod:`dpnet_runtime.contract`.

The contract and why it is data: docs/design.md#the-artifact-contract.

:func:`export_onnx` writes ``dpnet.onnx`` (one episode) and the split pair
``dpnet_support.onnx`` / ``dpnet_query.onnx`` in FP32, and for each precision asked for the
graphs of its rows of ``contract.FORMATS`` (:func:`dpnet_export.low_precision.low_precision_graphs`:
``*_fp16.onnx``; ``*_int8.onnx`` for ONNX Runtime and ``*_int8_trt.onnx`` for TensorRT). Each
graph is exported with ``torch.onnx.export(dynamo=True)`` at a static image size with batch B
and shots K as dynamic axes named as the contract names them (``B``, ``K``), simplified by the
onnxscript optimizer (constant folding, dead code), stamped with the ``META_*`` metadata (its
precision among them), verified (``onnx.checker`` full check, strict shape inference, the op
rules below, and the lint of ``dpnet-export check`` with the rules of the runtime it is for)
and only then written: every graph is built in memory first, and the files are swapped in as
one set (:func:`dpnet_runtime.fileio.atomic_write_files`), so a failure leaves the earlier
export in the folder exactly as it was.

Op rules, checked on every graph (:mod:`dpnet_export.op_rules`, shared with the lint): the
nodes under the scope ``ccm`` use only ``CCM_ALLOWED_OPS`` and no QuantizeLinear/
DequantizeLinear feeds or follows them but those of the INT8 similarity
(:func:`dpnet_export.ccm_int8.stray_ccm_qdq`); no node anywhere is one of ``FORBIDDEN_OPS``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import onnx
import torch
from torch import Tensor, nn

from dpnet import __version__
from dpnet.checkpoint import load_model
from dpnet.config import check_beta
from dpnet.model.dpnet import DPNet
from dpnet_export.calibration import (
    CalibrationOptions,
    check_calibration_options,
    load_calibration_set,
)
from dpnet_export.ccm_int8 import stray_ccm_qdq
from dpnet_export.lint import lint_onnx
from dpnet_export.low_precision import low_precision_graphs
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, nodes_in_scope
from dpnet_export.op_rules import CCM_ALLOWED_OPS, FORBIDDEN_OPS
from dpnet_export.wrappers import GRAPH_MODULES
from dpnet_runtime import contract
from dpnet_runtime.contract import FORMATS, GRAPHS, GraphSpec, find_format
from dpnet_runtime.errors import ExportError, InputError, OptionError, one_line
from dpnet_runtime.fileio import atomic_write_files, sha256_file
from dpnet_runtime.formats import converted_precisions, lint_target
from dpnet_runtime.outputs import refuse_inputs, refuse_replacing

__all__ = [
    "ExportOptions",
    "ExportResult",
    "check_graph",
    "export_onnx",
    "lint_graph",
]

logger = logging.getLogger(__name__)

_MIN_SIZE: Final = 33  # DPNetConfig's smallest input_size
_EXAMPLE_BATCH: Final = 2  # torch.export specialises axes whose example size is 0 or 1


@dataclass(frozen=True)
class ExportOptions:
    """What to export; ``None`` fields default to the checkpoint's config.

    Args:
        size: square input side H = W (static in the graph); default ``config.input_size``.
        max_shots: largest K the graphs accept (K is a dynamic axis over 1..max_shots).
        precisions: the other precisions to write besides FP32 (``("fp16", "int8")``), each
            one of :func:`dpnet_runtime.formats.converted_precisions`: the graphs of its rows
            (``*_fp16.onnx``; ``*_int8.onnx`` and ``*_int8_trt.onnx``).
        calibration: the calibration data and method of the calibrated precisions (INT8).
        int8_ccm: the INT8 copies run the CCM's similarity MatMul in INT8 too
            (:mod:`dpnet_export.ccm_int8`); ``False`` keeps the whole CCM float.
        beta: discriminator threshold baked into the graphs; default ``config.beta_test``.
        raw_input: uint8 NHWC images and uint8 masks, normalised inside the graph.
        opset: ONNX opset (18: the one the TensorRT 10 parser and onnxruntime both cover).
        overwrite: remove the graphs of an earlier export that this one does not write (its
            other precisions: they would not match the new graphs); without it such a folder
            is refused before anything runs.
    """

    size: int | None = None
    max_shots: int = 5
    precisions: tuple[str, ...] = ()
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    int8_ccm: bool = True
    beta: float | None = None
    raw_input: bool = False
    opset: int = 18
    overwrite: bool = False


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes:
        out_dir: the export directory.
        files: the written graph files, FP32 first.
        input_size: H = W of the graphs.
        beta: the discriminator threshold in the graphs.
        checkpoint_sha256: hex sha256 of the checkpoint file.
        seconds: wall time of the whole export.
    """

    out_dir: Path
    files: tuple[Path, ...]
    input_size: int
    beta: float
    checkpoint_sha256: str
    seconds: float


def export_onnx(
    checkpoint: Path,
    out_dir: Path,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint to the graphs of the artifact contract.

    Args:
        checkpoint: a ``dpnet-checkpoint`` file (``dpnet-train`` output).
        out_dir: destination folder, created if missing.
        options: see :class:`ExportOptions`; ``None`` uses the defaults.
        progress: called with a short message before each stage.

    Returns:
        :class:`ExportResult` naming the written files.

    Raises:
        OptionError: invalid options.
        InputError: ``out_dir`` cannot be created or written, is or lies inside an input, or
            holds an earlier export's other precisions (without ``overwrite``).
        ModelFileError: missing, damaged or foreign checkpoint.
        DatasetError: the INT8 calibration dataset cannot be read.
        ExportError: the exporter, the quantizer, the ONNX checker or the op rules rejected
            a graph.

    >>> options = ExportOptions(precisions=("fp16",))
    >>> export_onnx(Path("model.pt"), Path("out"), options)  # doctest: +SKIP
    """
    options = options or ExportOptions()
    report = progress or (lambda _message: None)
    start = time.perf_counter()
    _check_options(options)
    _check_writable(Path(out_dir))
    refuse_inputs(
        {"--out": [out_dir]},
        {"--ckpt": [checkpoint]},
        trees={"--data-root": [options.calibration.root]},
    )
    planned = {Path(out_dir) / name for name in _planned_names(options)}
    refuse_replacing(
        _graph_files(Path(out_dir)) - planned,
        "--out",
        "an earlier export wrote in other precisions and would no longer match the new graphs",
        action="remove them",
        overwrite=options.overwrite,
    )
    model, loaded = load_model(Path(checkpoint))
    size = options.size or loaded.config.input_size
    calibration = (
        load_calibration_set(options.calibration, size=size, raw_input=options.raw_input)
        if _calibrated(options.precisions)
        else None
    )
    beta = loaded.config.beta_test if options.beta is None else options.beta
    digest = sha256_file(checkpoint)
    metadata = {
        contract.META_DPNET_VERSION: __version__,
        contract.META_CONFIG: json.dumps(loaded.config.to_dict(), sort_keys=True),
        contract.META_CHECKPOINT_SHA256: digest,
        contract.META_INPUT_SIZE: str(size),
        contract.META_MEAN: json.dumps(list(contract.IMAGENET_MEAN)),
        contract.META_STD: json.dumps(list(contract.IMAGENET_STD)),
        contract.META_BETA: json.dumps(beta),
        contract.META_OPSET: str(options.opset),
        contract.META_RAW_INPUT: json.dumps(options.raw_input),
        contract.META_PRECISION: contract.SOURCE_PRECISION,
        contract.META_MAX_SHOTS: str(options.max_shots),
    }
    fp32 = find_format("ort", contract.SOURCE_PRECISION)
    graphs: dict[str, onnx.ModelProto] = {}
    for spec in GRAPHS.values():
        name = fp32.file_name(spec.role)
        report(f"exporting {name}")
        wrapper = GRAPH_MODULES[spec.role](model, beta, options.raw_input)
        inputs = _example_inputs(spec, model, size, options)
        proto = _torch_to_proto(wrapper, spec, name, inputs, options)
        _set_metadata(proto, {**metadata, **_graph_metadata(spec)})
        check_graph(proto, name)
        graphs[name] = proto
    fp32_graphs = {role: graphs[fp32.file_name(role)] for role in GRAPHS}
    for precision in options.precisions:
        copies = low_precision_graphs(
            fp32_graphs, precision, calibration, report, int8_ccm=options.int8_ccm
        )
        for name, copy in copies.items():
            check_graph(copy, name)
        graphs.update(copies)
    for name, proto in graphs.items():
        report(f"linting {name}")
        lint_graph(proto, name)
    report(f"writing {len(graphs)} files to {out_dir}")
    files = _write_all(Path(out_dir), graphs)
    seconds = time.perf_counter() - start
    logger.info("exported %d graphs to %s in %.1f s", len(files), out_dir, seconds)
    return ExportResult(Path(out_dir), files, size, beta, digest, seconds)


def check_graph(proto: onnx.ModelProto, name: str) -> None:
    """ONNX checker (full), strict shape inference and the op rules of the module docstring.

    Raises:
        ExportError: naming the graph and what failed.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        message = f"{name} failed the ONNX checker: {one_line(exc, limit=200)}"
        raise ExportError(message, str(exc)) from exc
    forbidden = sorted({node.op_type for node in proto.graph.node} & FORBIDDEN_OPS.keys())
    ccm_ops = {node.op_type for node in nodes_in_scope(proto, CCM_SCOPE)}
    stray = sorted(ccm_ops - CCM_ALLOWED_OPS)
    if forbidden or stray:
        raise ExportError(
            f"{name} breaks the op rules: forbidden ops {forbidden}, CCM ops outside the allowed "
            f"list {stray}; the model code must stay static (see dpnet/model/ccm.py)"
        )
    quantized = stray_ccm_qdq(proto)
    if quantized:
        raise ExportError(
            f"{name} quantizes the CCM: {quantized[:3]} feed or follow it; only the inputs of "
            "its similarity MatMul may be quantized (dpnet_export.ccm_int8)"
        )


def lint_graph(proto: onnx.ModelProto, name: str) -> None:
    """The ``dpnet-export check`` lint, with the rules of the runtime file ``name`` is for
    (:func:`dpnet_runtime.formats.lint_target`); warnings are logged.

    Raises:
        ExportError: the lint found errors (the first ones named; ``.log`` has them all).
    """
    report = lint_onnx(proto, lint_target(name))
    for finding in report.warnings:
        logger.info("%s: lint warning at %s (%s): %s", name, finding.node, finding.op_type,
                    finding.message)  # fmt: skip
    if not report.passed:
        errors = [f"{f.node} ({f.op_type}): {f.message}" for f in report.errors]
        raise ExportError(
            f"{name} fails dpnet-export check ({report.target} rules, {len(errors)} error(s)): "
            f"{'; '.join(errors[:2])}",
            "\n".join(errors),
        )


def _calibrated(precisions: tuple[str, ...]) -> bool:
    return any(row.calibrated for row in FORMATS.values() if row.precision in precisions)


def _check_options(options: ExportOptions) -> None:
    if options.size is not None and options.size < _MIN_SIZE:
        raise OptionError(f"--size must be at least {_MIN_SIZE} pixels, got {options.size}")
    if not 1 <= options.max_shots <= 64:
        raise OptionError(f"--max-shots must lie in 1..64, got {options.max_shots}")
    if options.beta is not None:
        check_beta(options.beta, "--beta")
    if options.opset < 18:
        raise OptionError(
            f"opset must be 18 or newer (Reduce* axes as inputs), got {options.opset}"
        )
    choices = converted_precisions()
    unknown = [precision for precision in options.precisions if precision not in choices]
    if unknown:
        raise OptionError(
            f"--precision {', '.join(unknown)} is not one of {', '.join(choices)} (FP32 graphs "
            "are always written)"
        )
    if _calibrated(options.precisions):
        check_calibration_options(options.calibration)
    elif options.calibration != CalibrationOptions():
        calibrated = sorted({row.precision for row in FORMATS.values() if row.calibrated})
        raise OptionError(
            f"the --calib-* options and --data-root calibrate {', '.join(calibrated)}: add "
            f"--precision {','.join(calibrated)}"
        )
    if options.int8_ccm != ExportOptions.int8_ccm and "int8" not in options.precisions:
        raise OptionError("--no-int8-ccm chooses the CCM of the INT8 copies: add --precision int8")


def _check_writable(out_dir: Path) -> None:
    # Fail before the slow export: find the nearest existing ancestor and test it.
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write to {out_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write to {out_dir}: {existing} is not writable; choose another --out"
        )


def _example_inputs(
    spec: GraphSpec, model: DPNet, size: int, options: ExportOptions
) -> tuple[Tensor, ...]:
    # Values only drive the trace (the graph is static); B and K sizes must be >= 2 to stay dynamic.
    axes = {contract.BATCH_AXIS: _EXAMPLE_BATCH, contract.SHOTS_AXIS: min(2, options.max_shots)}
    inputs, _ = spec.bind(
        size=size, channels=model.config.feature_channels, raw_input=options.raw_input
    )
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for tensor in inputs.values():
        shape = [axes[dim] if isinstance(dim, str) else dim for dim in tensor.shape]
        if tensor.dtype == "uint8":
            tensors.append(torch.randint(0, 2, shape, dtype=torch.uint8, generator=generator))
        else:
            tensors.append(torch.rand(shape, generator=generator))
    return tuple(tensors)


def _dynamic_shapes(spec: GraphSpec, max_shots: int) -> dict[str, dict[int, Any]]:
    # The Dim names become the graphs' dim_params: the contract's, as TensorRT reports them too.
    batch = torch.export.Dim(contract.BATCH_AXIS, min=1)
    # A one-shot export keeps K static: torch.export cannot make an axis of range 1..1 dynamic.
    shots = torch.export.Dim(contract.SHOTS_AXIS, min=1, max=max_shots) if max_shots > 1 else None
    dims = {contract.BATCH_AXIS: batch, contract.SHOTS_AXIS: shots}
    return {
        tensor.name: {
            axis: dims[dim]
            for axis, dim in enumerate(tensor.shape)
            if isinstance(dim, str) and dims.get(dim) is not None
        }
        for tensor in spec.inputs
    }


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    # The optimiser logs a warning for every multi-output node it cannot fold: noise to a user.
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torch_to_proto(
    wrapper: nn.Module,
    spec: GraphSpec,
    name: str,
    inputs: tuple[Tensor, ...],
    options: ExportOptions,
) -> onnx.ModelProto:
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("onnxscript.optimizer"):
            # torch.onnx notes that equal Dims share one name; that is what we want.
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares")
            program = torch.onnx.export(
                wrapper.eval(),
                inputs,
                dynamo=True,
                opset_version=options.opset,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=_dynamic_shapes(spec, options.max_shots),
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # torch.export and the ONNX translator raise many exception types
        raise ExportError(
            f"torch.onnx.export failed for {name}: {one_line(exc, limit=200)} (rerun with --debug)",
            str(exc),
        ) from exc
    if program is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    proto: onnx.ModelProto = program.model_proto
    proto.producer_name = "dpnet-export"
    proto.producer_version = __version__
    proto.doc_string = f"DPNet {spec.role} graph, see dpnet_runtime.contract"
    return proto


def _graph_metadata(spec: GraphSpec) -> dict[str, str]:
    return {
        contract.META_GRAPH: spec.role,
        contract.META_INPUTS: json.dumps(list(spec.input_names)),
        contract.META_OUTPUTS: json.dumps(list(spec.output_names)),
    }


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    onnx.helper.set_model_props(proto, values)


def _graph_files(out_dir: Path) -> set[Path]:
    """Every ONNX graph a format reads: its own copies, and the graphs an engine is built from."""
    return {
        out_dir / fmt.onnx_name(role)
        for fmt in FORMATS.values()
        if fmt.artifact != "checkpoint"
        for role in GRAPHS
    }


def _planned_names(options: ExportOptions) -> set[str]:
    """The graph files an export with ``options`` writes (FP32 always)."""
    precisions = {contract.SOURCE_PRECISION, *options.precisions}
    return {
        fmt.onnx_name(role)
        for fmt in FORMATS.values()
        if fmt.artifact != "checkpoint" and fmt.precision in precisions
        for role in GRAPHS
    }


def _write_all(out_dir: Path, graphs: dict[str, onnx.ModelProto]) -> tuple[Path, ...]:
    """Swap the new graphs in as one set: all of them, or the earlier export untouched.

    Graphs of an earlier export that this one does not write (its FP16 or INT8 copies) go in
    the same swap: they would not match the new FP32 graphs.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out_dir}: {exc.strerror}; choose another --out") from exc
    files = {out_dir / name: proto.SerializeToString() for name, proto in graphs.items()}
    stale = sorted(path for path in _graph_files(out_dir) - files.keys() if path.exists())
    for path in stale:
        logger.info("removing %s from an earlier export", path)
    atomic_write_files(files, remove=stale)
    return tuple(files)
