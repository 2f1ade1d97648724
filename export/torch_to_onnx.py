"""DPNet checkpoint -> ONNX graphs that follow :mod:`dpnet_runtime.contract` (DESIGN.md section 5).

:func:`export_onnx` writes ``dpnet.onnx`` (one episode), the split pair ``dpnet_support.onnx`` /
``dpnet_query.onnx``, with ``fp16`` their ``*_fp16.onnx`` mixed-precision copies and, with
``int8``, their calibrated INT8 copies for ONNX Runtime (``*_int8.onnx``) and for TensorRT
(``*_int8_trt.onnx``, :mod:`dpnet_export.onnx_to_int8`). Each
graph is exported with ``torch.onnx.export(dynamo=True)`` at a static image size with batch B
and shots K as dynamic axes, simplified by the onnxscript optimizer (constant folding, dead
code), stamped with the ``META_*`` metadata, verified (``onnx.checker`` full check, strict
shape inference, the op rules below) and only then written: every graph is built in memory
first, and the files are swapped in as one set (:func:`dpnet_runtime.fileio.atomic_write_files`),
so a failure leaves the earlier export in the folder exactly as it was.

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
    CalibrationSet,
    check_calibration_options,
    load_calibration_set,
    role_feeds,
)
from dpnet_export.ccm_int8 import stray_ccm_qdq
from dpnet_export.onnx_to_fp16 import CCM_SCOPE, float32_to_float16, nodes_in_scope
from dpnet_export.onnx_to_int8 import float32_to_int8
from dpnet_export.op_rules import CCM_ALLOWED_OPS, FORBIDDEN_OPS
from dpnet_export.wrappers import GRAPH_MODULES
from dpnet_runtime import contract
from dpnet_runtime.contract import FORMATS, GRAPHS, SUPPORT, GraphSpec, find_format
from dpnet_runtime.errors import ExportError, InputError, one_line
from dpnet_runtime.fileio import atomic_write_files, sha256_file

__all__ = [
    "ExportOptions",
    "ExportResult",
    "check_graph",
    "export_onnx",
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
        fp16: also write the ``*_fp16.onnx`` mixed-precision copies.
        int8: also write the INT8 copies (``*_int8.onnx`` for ONNX Runtime, ``*_int8_trt.onnx``
            for TensorRT), calibrated on ``calibration``'s episodes.
        calibration: the INT8 calibration data and method.
        int8_ccm: the INT8 copies run the CCM's similarity MatMul in INT8 too
            (:mod:`dpnet_export.ccm_int8`); ``False`` keeps the whole CCM float.
        beta: discriminator threshold baked into the graphs; default ``config.beta_test``.
        raw_input: uint8 NHWC images and uint8 masks, normalised inside the graph.
        opset: ONNX opset (18: the one the TensorRT 10 parser and onnxruntime both cover).
    """

    size: int | None = None
    max_shots: int = 5
    fp16: bool = False
    int8: bool = False
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    int8_ccm: bool = True
    beta: float | None = None
    raw_input: bool = False
    opset: int = 18


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
        InputError: invalid options, or ``out_dir`` cannot be created or written.
        ModelFileError: missing, damaged or foreign checkpoint.
        DatasetError: the INT8 calibration dataset cannot be read.
        ExportError: the exporter, the quantizer, the ONNX checker or the op rules rejected
            a graph.

    >>> export_onnx(Path("model.pt"), Path("out"), ExportOptions(fp16=True))  # doctest: +SKIP
    """
    options = options or ExportOptions()
    report = progress or (lambda _message: None)
    start = time.perf_counter()
    _check_options(options)
    _check_writable(Path(out_dir))
    model, loaded = load_model(Path(checkpoint))
    size = options.size or loaded.config.input_size
    calibration = (
        load_calibration_set(options.calibration, size=size, raw_input=options.raw_input)
        if options.int8
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
        contract.META_PRECISION: "fp32",
        contract.META_MAX_SHOTS: str(options.max_shots),
    }
    fp32 = FORMATS["ort"]
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
    if options.fp16:
        fp16 = FORMATS["ort-fp16"]
        for role in GRAPHS:
            report(f"converting {fp32.file_name(role)} to mixed FP16")
            name = fp16.file_name(role)
            graphs[name] = _fp16_copy(graphs[fp32.file_name(role)], name)
    if calibration is not None:
        fp32_graphs = {role: graphs[fp32.file_name(role)] for role in GRAPHS}
        graphs.update(_int8_copies(fp32_graphs, calibration, options.int8_ccm, report))
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


def _check_options(options: ExportOptions) -> None:
    if options.size is not None and options.size < _MIN_SIZE:
        raise InputError(f"--size must be at least {_MIN_SIZE} pixels, got {options.size}")
    if not 1 <= options.max_shots <= 64:
        raise InputError(f"--max-shots must lie in 1..64, got {options.max_shots}")
    if options.beta is not None:
        check_beta(options.beta, "--beta")
    if options.opset < 18:
        raise InputError(f"opset must be 18 or newer (Reduce* axes as inputs), got {options.opset}")
    if options.int8:
        check_calibration_options(options.calibration)
    elif options.calibration != CalibrationOptions():
        raise InputError("the --calib-* options and --data-root calibrate --int8: add --int8")
    elif options.int8_ccm != ExportOptions.int8_ccm:
        raise InputError("--no-int8-ccm chooses the CCM of the INT8 copies: add --int8")


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
    batch = torch.export.Dim("batch", min=1)
    # A one-shot export keeps K static: torch.export cannot make an axis of range 1..1 dynamic.
    shots = torch.export.Dim("shots", min=1, max=max_shots) if max_shots > 1 else None
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


def _fp16_copy(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    converted = float32_to_float16(proto)
    check_graph(converted, name)
    return converted


def _int8_copies(
    fp32: dict[str, onnx.ModelProto],
    calibration: CalibrationSet,
    int8_ccm: bool,
    report: Callable[[str], None],
) -> dict[str, onnx.ModelProto]:
    # Every role calibrates on the same episodes; each quantizer run serves both flavours.
    copies: dict[str, onnx.ModelProto] = {}
    method, episodes = calibration.options.method, len(calibration.feeds)
    for role, proto in fp32.items():
        report(f"calibrating {GRAPHS[role].file} on {episodes} episodes ({method}), quantizing")
        feeds = role_feeds(calibration.feeds, role, fp32[SUPPORT])
        described = calibration.options.describe()
        quantized = float32_to_int8(
            proto, feeds, method=method, calibration=described, int8_ccm=int8_ccm
        )
        for backend, copy in quantized.items():
            name = find_format(backend, "int8").onnx_name(role)
            check_graph(copy, name)
            copies[name] = copy
    return copies


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
    # Every ONNX graph a format reads: its own copies, and the graphs an engine is built from.
    graph_files = {
        out_dir / fmt.onnx_name(role)
        for fmt in FORMATS.values()
        if fmt.artifact != "checkpoint"
        for role in GRAPHS
    }
    stale = sorted(path for path in graph_files - files.keys() if path.exists())
    for path in stale:
        logger.info("removing %s from an earlier export", path)
    atomic_write_files(files, remove=stale)
    return tuple(files)
