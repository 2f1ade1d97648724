"""ONNX -> serialized TensorRT engine (``dpnet-export trt``), for TensorRT 10.x and 11.

Precision, the version branch (:func:`plan_precision`): TensorRT 11 removed weak typing
(``BuilderFlag.FP16`` is gone), so FP16 comes from the mixed-precision ``*_fp16.onnx`` graph
built as a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, accepted
and always on in 11). TensorRT 10 builds the FP32 graph with ``BuilderFlag.FP16``, letting the
builder pick FP16 kernels; given an ``*_fp16.onnx`` file, 10.x also builds it strongly typed.

The optimisation profile covers B (batch) and K (shots) on every input that has them
(:func:`build_profiles`); the build reuses a timing cache file and an engine cache
(``dpnet_export.engine_cache``). Everything but :func:`onnx_to_engine` runs without TensorRT.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

from dpnet_export.engine_cache import cached_engine, engine_cache_key, write_engine
from dpnet_export.trtexec import trtexec_command
from dpnet_runtime import __version__, contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.trt import (
    EngineSidecar,
    TensorProfile,
    capture_logger,
    import_tensorrt,
    sidecar_path,
    tensorrt_major,
)
from dpnet_runtime.errors import BackendUnavailableError, ExportError, InputError, ModelFileError
from dpnet_runtime.fileio import atomic_write_bytes, sha256_bytes

__all__ = [
    "EngineBuildOptions",
    "EngineBuildResult",
    "PrecisionPlan",
    "ShapeRange",
    "build_profiles",
    "installed_tensorrt_version",
    "onnx_input_shapes",
    "onnx_metadata",
    "onnx_to_engine",
    "onnx_to_trtexec",
    "parse_shape_range",
    "parse_workspace",
    "plan_precision",
]

_LOG = logging.getLogger(__name__)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MIN_TENSORRT_MAJOR = 10


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of one dynamic axis (an optimisation profile's three points)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(
                f"shape range {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max"
            )


def parse_shape_range(text: str) -> ShapeRange:
    """Parse ``"min:opt:max"`` (or one number for a fixed size) from the CLI.

    >>> parse_shape_range("1:1:5")
    ShapeRange(min=1, opt=1, max=5)

    Raises:
        InputError: not one or three integers, or not 1 <= min <= opt <= max.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 3) or not all(part.strip().isdigit() for part in parts):
        raise InputError(f"shape range {text!r} must be 'min:opt:max' (e.g. 1:1:5) or one integer")
    values = [int(part) for part in parts]
    return ShapeRange(values[0], values[len(values) // 2], values[-1])


def parse_workspace(text: str) -> int:
    """Parse a workspace size (``"4G"``, ``"512M"``, ``"1073741824"``; binary units) to bytes.

    >>> parse_workspace("4G")
    4294967296

    Raises:
        InputError: not a positive size.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    size = int(match.group(1)) * _UNITS[match.group(2).upper()] if match else 0
    if size <= 0:
        raise InputError(
            f"workspace {text!r} must be a positive size such as 4G, 512M or 1073741824"
        )
    return size


def onnx_metadata(path: Path) -> dict[str, str]:
    """The graph's ``metadata_props`` as a dict (copied into the engine sidecar).

    Raises:
        ModelFileError: the file is missing or is not an ONNX model.
    """
    return {prop.key: prop.value for prop in _load_graph(path).metadata_props}


def onnx_input_shapes(path: Path) -> dict[str, tuple[int | str, ...]]:
    """Graph inputs (initializers excluded) and their dims: ints, or names for dynamic axes.

    Raises:
        ModelFileError: the file is missing or is not an ONNX model.
    """
    model = _load_graph(path)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [info for info in model.graph.input if info.name not in initializers]
    if not inputs:
        raise ModelFileError(f"{path} is not an ONNX model with graph inputs; re-export it")
    return {
        info.name: tuple(
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
            for dim in info.type.tensor_type.shape.dim
        )
        for info in inputs
    }


def _load_graph(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelFileError(
            f"ONNX file {path} does not exist (export it with `dpnet-export onnx`)"
        )
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it"
        ) from exc


def build_profiles(
    input_shapes: Mapping[str, Sequence[int | str]], *, batch: ShapeRange, shots: ShapeRange
) -> tuple[TensorProfile, ...]:
    """The optimisation profile: B on axis 0 of every input, K on axis 1 of the support inputs.

    Static axes keep their size (a graph exported with a fixed B uses it, whatever ``batch``).

    Args:
        input_shapes: from :func:`onnx_input_shapes`.
        batch: the B range (``--batch-range``).
        shots: the K range (``--shots-range``), applied to every input with a K axis
            (``support_images``, ``support_masks`` and the support-cache inputs).

    Raises:
        ModelFileError: an input has a dynamic axis other than B and K.
    """
    profiles = []
    for name, dims in input_shapes.items():
        points: list[list[int]] = [[], [], []]
        for axis, dim in enumerate(dims):
            symbol = contract.symbolic_axis(name, axis)
            if isinstance(dim, int) and dim > 0:
                values: tuple[int, int, int] = (dim, dim, dim)
            elif symbol == contract.BATCH_AXIS:
                values = (batch.min, batch.opt, batch.max)
            elif symbol == contract.SHOTS_AXIS:
                values = (shots.min, shots.opt, shots.max)
            else:
                raise ModelFileError(
                    f"input {name!r} axis {axis} ({dim}) is dynamic but only B (axis 0) and K "
                    "(axis 1 of support inputs) may be; re-export with a fixed --size"
                )
            for point, value in zip(points, values, strict=True):
                point.append(value)
        profiles.append(TensorProfile(name, *(tuple(point) for point in points)))
    return tuple(profiles)


@dataclass(frozen=True)
class PrecisionPlan:
    """How the installed TensorRT gets the requested precision.

    Attributes:
        onnx_path: the graph to parse (the ``*_fp16.onnx`` copy for strongly typed FP16).
        precision: ``"fp16"`` or ``"fp32"``.
        strongly_typed: create the network with ``STRONGLY_TYPED``.
        fp16_flag: set ``BuilderFlag.FP16`` (TensorRT 10 only).
    """

    onnx_path: Path
    precision: str
    strongly_typed: bool
    fp16_flag: bool


def plan_precision(onnx_path: Path, *, fp16: bool, tensorrt_version: str) -> PrecisionPlan:
    """The version branch: strongly typed FP16 ONNX on TensorRT >= 11, ``BuilderFlag.FP16`` on 10.x.

    Args:
        onnx_path: the graph given on the command line (``dpnet.onnx`` or ``dpnet_fp16.onnx``).
        fp16: an FP16 engine is wanted.
        tensorrt_version: the installed (or targeted) TensorRT version.

    Raises:
        InputError: TensorRT older than 10, FP32 asked of an FP16 graph, or the FP16 copy that
            TensorRT 11 needs is missing.
    """
    major = tensorrt_major(tensorrt_version)
    if major < _MIN_TENSORRT_MAJOR:
        raise InputError(
            f"TensorRT {tensorrt_version} is too old; dpnet needs TensorRT 10 or newer"
        )
    fp16_tag = contract.FORMATS["ort-fp16"].tag
    is_fp16_graph = onnx_path.stem.endswith(fp16_tag)
    if is_fp16_graph and not fp16:
        raise InputError(
            f"{onnx_path} is the mixed-precision graph: add --fp16, or pass the FP32 graph"
        )
    if not fp16:
        return PrecisionPlan(onnx_path, "fp32", major >= 11, False)
    if is_fp16_graph:
        return PrecisionPlan(onnx_path, "fp16", True, False)
    if major == _MIN_TENSORRT_MAJOR:
        return PrecisionPlan(onnx_path, "fp16", False, True)
    fp16_path = onnx_path.with_name(f"{onnx_path.stem}{fp16_tag}.onnx")
    if not fp16_path.is_file():
        raise InputError(
            f"TensorRT {tensorrt_version} builds FP16 only from the mixed-precision graph "
            f"{fp16_path}, which is missing: run `dpnet-export onnx --fp16` first"
        )
    return PrecisionPlan(fp16_path, "fp16", True, False)


@dataclass(frozen=True)
class EngineBuildOptions:
    """Everything ``dpnet-export trt`` needs; the CLI flags are its kebab-case twins.

    Attributes:
        onnx_path: the FP32 graph (``DIR/dpnet.onnx``) or its ``_fp16`` copy.
        out_path: engine file; ``None`` means ``dpnet.engine`` beside the ONNX file.
        fp16: build an FP16 engine (see :func:`plan_precision`).
        batch: B range of the profile.
        shots: K range of the profile.
        workspace_bytes: builder workspace pool limit.
        timing_cache: timing-cache file read before and written after the build.
        rebuild: ignore a cached engine with the same key.
        device: CUDA device to build for.
    """

    onnx_path: Path
    out_path: Path | None = None
    fp16: bool = False
    batch: ShapeRange = field(default_factory=lambda: ShapeRange(1, 1, 4))
    shots: ShapeRange = field(default_factory=lambda: ShapeRange(1, 1, 5))
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    rebuild: bool = False
    device: int = 0

    @property
    def engine_path(self) -> Path:
        """Where the engine goes."""
        engine_file = contract.FORMATS["trt"].file_name(contract.EPISODE)
        return self.out_path or self.onnx_path.with_name(engine_file)


@dataclass(frozen=True)
class EngineBuildResult:
    """A built (or reused) engine.

    Attributes:
        engine_path: the engine file.
        sidecar_path: its ``.engine.json``.
        sidecar: what was recorded in it.
        reused: True when the engine cache served it and nothing was built.
    """

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    reused: bool


def installed_tensorrt_version() -> str | None:
    """``tensorrt.__version__``, or ``None`` when TensorRT is not installed."""
    try:
        return str(import_tensorrt().__version__)
    except BackendUnavailableError:
        return None


def onnx_to_trtexec(options: EngineBuildOptions, *, tensorrt_version: str) -> str:
    """The trtexec command equivalent to ``onnx_to_engine(options)`` on that TensorRT version."""
    plan = plan_precision(options.onnx_path, fp16=options.fp16, tensorrt_version=tensorrt_version)
    shapes = onnx_input_shapes(plan.onnx_path)
    return trtexec_command(
        onnx_path=plan.onnx_path,
        engine_path=options.engine_path,
        profiles=build_profiles(shapes, batch=options.batch, shots=options.shots),
        strongly_typed=plan.strongly_typed,
        fp16_flag=plan.fp16_flag,
        workspace_bytes=options.workspace_bytes,
        timing_cache=options.timing_cache,
    )


def onnx_to_engine(
    options: EngineBuildOptions, *, progress: Callable[[str], None] | None = None
) -> EngineBuildResult:
    """Build (or reuse) a serialized TensorRT engine and its sidecar, written atomically.

    Args:
        options: the build settings.
        progress: called with a short status line at each stage.

    Returns:
        The :class:`EngineBuildResult`.

    Raises:
        BackendUnavailableError: TensorRT, cuda-python or a GPU is absent.
        ModelFileError: the ONNX file is missing or not ONNX.
        InputError: bad ranges or precision options.
        ExportError: the parser or builder failed; ``.log`` has TensorRT's messages.
    """
    report = progress or _LOG.info
    trt = import_tensorrt()
    plan = plan_precision(options.onnx_path, fp16=options.fp16, tensorrt_version=trt.__version__)
    profiles = build_profiles(
        onnx_input_shapes(plan.onnx_path), batch=options.batch, shots=options.shots
    )
    onnx_bytes = plan.onnx_path.read_bytes()
    cuda.set_device(options.device)
    gpu = cuda.gpu_info(options.device)
    key = engine_cache_key(
        onnx_bytes,
        tensorrt_version=trt.__version__,
        gpu=gpu,
        precision=plan.precision,
        strongly_typed=plan.strongly_typed,
        profiles=profiles,
        workspace_bytes=options.workspace_bytes,
    )
    engine_path = options.engine_path
    cached = None if options.rebuild else cached_engine(engine_path, key)
    if cached is not None:
        report(f"engine cache hit: {engine_path} (key {key[:12]})")
        return EngineBuildResult(engine_path, sidecar_path(engine_path), cached, reused=True)
    report(
        f"building {plan.precision} engine from {plan.onnx_path} with TensorRT {trt.__version__}"
    )
    start = time.perf_counter()
    engine = _build_serialized(trt, plan, profiles, options)
    sidecar = EngineSidecar(
        onnx_file=plan.onnx_path.name,
        onnx_sha256=sha256_bytes(onnx_bytes),
        engine_sha256=sha256_bytes(engine),
        cache_key=key,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=plan.precision,
        strongly_typed=plan.strongly_typed,
        profiles=profiles,
        workspace_bytes=options.workspace_bytes,
        build_seconds=round(time.perf_counter() - start, 3),
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        dpnet_version=__version__,
        graph_metadata=onnx_metadata(plan.onnx_path),
    )
    side = write_engine(engine_path, engine, sidecar)
    report(f"wrote {engine_path} and {side.name} in {sidecar.build_seconds:.0f} s")
    return EngineBuildResult(engine_path, side, sidecar, reused=False)


def _build_serialized(
    trt: Any, plan: PrecisionPlan, profiles: Sequence[TensorProfile], options: EngineBuildOptions
) -> bytes:
    logger = capture_logger(trt)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so external-data files beside the graph are found.
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(
            f"TensorRT's ONNX parser rejected {plan.onnx_path} ({len(errors)} error(s)): "
            f"{'; '.join(errors[:3])} (run `dpnet-export check` on it)",
            log="\n".join([*errors, *logger.messages]),
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for item in profiles:
        profile.set_shape(item.name, item.min, item.opt, item.max)
    config.add_optimization_profile(profile)
    _load_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        tail = " | ".join(logger.messages[-3:]) or "no message from TensorRT"
        raise ExportError(
            f"TensorRT could not build an engine from {plan.onnx_path}: {tail}",
            log="\n".join(logger.messages),
        )
    if options.timing_cache is not None:
        atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _parser_error(error: Any) -> str:
    return f"node {error.node()} {error.node_name()!r} ({error.node_operator()}): {error.desc()}"


def _load_timing_cache(config: Any, path: Path | None) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None and data:
        # A cache from another TensorRT version is useless, not fatal: start an empty one.
        _LOG.warning("timing cache %s is unusable; starting a new one", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
