"""ONNX -> serialized TensorRT engine (``dpnet-export trt``), for TensorRT 10.x and 11.

The precision plan (graph, typing, flags, TF32) is :mod:`dpnet_export.engine_precision`'s;
the builder calls are :mod:`dpnet_export.engine_builder`'s. This module holds the options,
the optimisation profile over B (batch) and K (shots) on every input that has them
(:func:`build_profiles`), the engine cache (``dpnet_export.engine_cache``), the equivalent
trtexec line (:func:`onnx_to_trtexec`; ``dpnet_export.engine_adopt`` gives the engine it
writes a sidecar). Everything but :func:`onnx_to_engine` runs without TensorRT.
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

from dpnet_export.engine_builder import build_serialized
from dpnet_export.engine_cache import cached_engine, engine_cache_key, write_engine
from dpnet_export.engine_precision import PrecisionPlan, engine_format, plan_precision
from dpnet_export.trtexec import trtexec_command
from dpnet_runtime import __version__, contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.trt import import_tensorrt
from dpnet_runtime.backends.trt_sidecar import EngineSidecar, TensorProfile, sidecar_path
from dpnet_runtime.errors import BackendUnavailableError, ModelFileError, OptionError
from dpnet_runtime.fileio import sha256_bytes
from dpnet_runtime.outputs import ENGINE_FORMATS, output_format, refuse_inputs

__all__ = [
    "BuildTarget",
    "EngineBuildOptions",
    "EngineBuildResult",
    "ShapeRange",
    "build_profiles",
    "build_target",
    "installed_tensorrt_version",
    "onnx_input_shapes",
    "onnx_metadata",
    "onnx_to_engine",
    "onnx_to_trtexec",
    "parse_shape_range",
    "parse_workspace",
]

_LOG = logging.getLogger(__name__)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class ShapeRange:
    """min / opt / max of one dynamic axis (an optimisation profile's three points)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise OptionError(
                f"shape range {self.min}:{self.opt}:{self.max} must satisfy 1 <= min <= opt <= max"
            )


def parse_shape_range(text: str) -> ShapeRange:
    """Parse ``"min:opt:max"`` (or one number for a fixed size) from the CLI.

    >>> parse_shape_range("1:1:5")
    ShapeRange(min=1, opt=1, max=5)

    Raises:
        OptionError: not one or three integers, or not 1 <= min <= opt <= max.
    """
    parts = text.strip().split(":")
    if len(parts) not in (1, 3) or not all(part.strip().isdigit() for part in parts):
        raise OptionError(f"shape range {text!r} must be 'min:opt:max' (e.g. 1:1:5) or one integer")
    values = [int(part) for part in parts]
    return ShapeRange(values[0], values[len(values) // 2], values[-1])


def parse_workspace(text: str) -> int:
    """Parse a workspace size (``"4G"``, ``"512M"``, ``"1073741824"``; binary units) to bytes.

    >>> parse_workspace("4G")
    4294967296

    Raises:
        OptionError: not a positive size.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    size = int(match.group(1)) * _UNITS[match.group(2).upper()] if match else 0
    if size <= 0:
        raise OptionError(
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
class EngineBuildOptions:
    """Everything ``dpnet-export trt`` needs; the CLI flags are its kebab-case twins.

    Attributes:
        model_dir: the export folder (``dpnet-export onnx --out``); the engine is built from the
            graph its ``trt`` row names (``dpnet.onnx``, ``dpnet_fp16.onnx``,
            ``dpnet_int8_trt.onnx``).
        out_path: engine file; ``None`` means the row's engine in ``model_dir``
            (``dpnet.engine``, ``dpnet_fp16.engine``, ``dpnet_int8.engine``).
        precision: a ``trt`` row of ``contract.FORMATS`` (see
            :func:`~dpnet_export.engine_precision.plan_precision`).
        graph: the graph role to build: ``episode`` (the runtime's engine), or ``support`` /
            ``query`` for a Triton plan (then ``out_path`` is required).
        weak_typing: TensorRT 10's fallback from the FP32 graph (``--weak-typing``).
        tf32: allow TF32 in FP32 layers (``--tf32``; off by default).
        batch: B range of the profile.
        shots: K range of the profile.
        workspace_bytes: builder workspace pool limit.
        timing_cache: timing-cache file read before and written after the build.
        rebuild: ignore a cached engine with the same key.
        device: CUDA device to build for.
    """

    model_dir: Path
    out_path: Path | None = None
    precision: str = contract.SOURCE_PRECISION
    graph: str = contract.EPISODE
    weak_typing: bool = False
    tf32: bool = False
    # B up to 8: dpnet-serve's default --max-batch runs on an engine built with the defaults.
    batch: ShapeRange = field(default_factory=lambda: ShapeRange(1, 1, 8))
    shots: ShapeRange = field(default_factory=lambda: ShapeRange(1, 1, 5))
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None
    rebuild: bool = False
    device: int = 0

    def __post_init__(self) -> None:
        # Checked before TensorRT is even imported: the engine and its sidecar never land on
        # the graph or the timing cache, and the engine's extension says it is one.
        output_format(self.engine_path, "--out", ENGINE_FORMATS, "engine")
        refuse_inputs(
            {"--out": [self.engine_path, sidecar_path(self.engine_path)]},
            {
                "--model": [self.model_dir / engine_format(self.precision).onnx_name(self.graph)],
                "--timing-cache": [self.timing_cache],
            },
        )

    @property
    def engine_path(self) -> Path:
        """Where the engine goes.

        Raises:
            OptionError: ``precision`` is no ``trt`` row, or a support or query graph without
                ``out_path`` (the runtime's engines are whole episodes).
        """
        fmt = engine_format(self.precision)
        if self.out_path is not None:
            return self.out_path
        if self.graph != contract.EPISODE:
            raise OptionError(
                f"--graph {self.graph} builds a Triton plan: give its file with --out"
            )
        return self.model_dir / fmt.file_name(contract.EPISODE)


@dataclass(frozen=True)
class EngineBuildResult:
    """A built (or reused) engine.

    Attributes:
        engine_path: the engine file.
        sidecar_path: its ``.engine.json``.
        sidecar: what was recorded in it.
        reused: True when the engine cache served it (or an engine was adopted) and
            nothing was built.
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


def _plan(options: EngineBuildOptions, tensorrt_version: str) -> PrecisionPlan:
    return plan_precision(
        options.model_dir,
        precision=options.precision,
        tensorrt_version=tensorrt_version,
        graph=options.graph,
        weak_typing=options.weak_typing,
        tf32=options.tf32,
    )


def onnx_to_trtexec(options: EngineBuildOptions, *, tensorrt_version: str) -> str:
    """The trtexec command equivalent to ``onnx_to_engine(options)`` on that TensorRT version.

    The engine it writes has no sidecar: give it one with
    :func:`dpnet_export.engine_adopt.adopt_engine` (``dpnet-export trt --adopt``).
    """
    plan = _plan(options, tensorrt_version)
    shapes = onnx_input_shapes(plan.onnx_path)
    return trtexec_command(
        onnx_path=plan.onnx_path,
        engine_path=options.engine_path,
        profiles=build_profiles(shapes, batch=options.batch, shots=options.shots),
        strongly_typed=plan.strongly_typed,
        builder_flags=plan.builder_flags,
        tf32=plan.tf32,
        workspace_bytes=options.workspace_bytes,
        timing_cache=options.timing_cache,
    )


@dataclass(frozen=True)
class BuildTarget:
    """What a build (or an adoption) is for: the plan, its graph bytes, the GPU, TensorRT.

    Attributes:
        plan: graph, typing and flags.
        onnx_bytes: the bytes of ``plan.onnx_path``.
        gpu: the device built for.
        tensorrt_version: ``trt.__version__``.
        workspace_bytes: the workspace pool limit.
    """

    plan: PrecisionPlan
    onnx_bytes: bytes
    gpu: cuda.GpuInfo
    tensorrt_version: str
    workspace_bytes: int

    def key(self, profiles: Sequence[TensorProfile]) -> str:
        """The engine-cache key of this target with ``profiles``."""
        return engine_cache_key(
            self.onnx_bytes,
            tensorrt_version=self.tensorrt_version,
            gpu=self.gpu,
            precision=self.plan.precision,
            strongly_typed=self.plan.strongly_typed,
            tf32=self.plan.tf32,
            profiles=profiles,
            workspace_bytes=self.workspace_bytes,
        )

    def sidecar(
        self, engine: bytes, profiles: tuple[TensorProfile, ...], seconds: float, adopted: bool
    ) -> EngineSidecar:
        """The sidecar of ``engine`` built (or adopted) for this target."""
        return EngineSidecar(
            onnx_file=self.plan.onnx_path.name,
            onnx_sha256=sha256_bytes(self.onnx_bytes),
            engine_sha256=sha256_bytes(engine),
            cache_key=self.key(profiles),
            tensorrt_version=self.tensorrt_version,
            gpu_name=self.gpu.name,
            compute_capability=self.gpu.compute_capability,
            precision=self.plan.precision,
            strongly_typed=self.plan.strongly_typed,
            tf32=self.plan.tf32,
            profiles=profiles,
            workspace_bytes=self.workspace_bytes,
            build_seconds=round(seconds, 3),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            dpnet_version=__version__,
            graph_metadata=onnx_metadata(self.plan.onnx_path),
            adopted=adopted,
        )


def build_target(trt: Any, options: EngineBuildOptions) -> BuildTarget:
    """Plan the precision, read the graph and make ``options.device`` current.

    Raises:
        InputError: bad precision options.
        ModelFileError: the graph is missing or not ONNX.
        BackendUnavailableError: no such CUDA device.
    """
    plan = _plan(options, trt.__version__)
    _load_graph(plan.onnx_path)  # a clear ModelFileError for a missing or broken graph
    onnx_bytes = plan.onnx_path.read_bytes()
    cuda.set_device(options.device)
    gpu = cuda.gpu_info(options.device)
    return BuildTarget(plan, onnx_bytes, gpu, trt.__version__, options.workspace_bytes)


def onnx_to_engine(
    options: EngineBuildOptions, *, progress: Callable[[str], None] | None = None
) -> EngineBuildResult:
    """Build (or reuse) a serialized TensorRT engine and its sidecar, written atomically.

    Args:
        options: the build settings.
        progress: called with a short status line at each stage, each build phase and each
            TensorRT warning or error.

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
    target = build_target(trt, options)
    plan = target.plan
    profiles = build_profiles(
        onnx_input_shapes(plan.onnx_path), batch=options.batch, shots=options.shots
    )
    key = target.key(profiles)
    engine_path = options.engine_path
    cached = None if options.rebuild else cached_engine(engine_path, key)
    if cached is not None:
        report(f"engine cache hit: {engine_path} (key {key[:12]})")
        return EngineBuildResult(engine_path, sidecar_path(engine_path), cached, reused=True)
    typing = "strongly typed" if plan.strongly_typed else "weakly typed"
    report(
        f"building {plan.precision} engine ({typing}, TF32 {'on' if plan.tf32 else 'off'}) "
        f"from {plan.onnx_path} with TensorRT {trt.__version__}"
    )
    start = time.perf_counter()
    engine = build_serialized(
        trt,
        plan,
        profiles,
        workspace_bytes=options.workspace_bytes,
        timing_cache=options.timing_cache,
        report=report,
    )
    sidecar = target.sidecar(engine, profiles, time.perf_counter() - start, adopted=False)
    side = write_engine(engine_path, engine, sidecar)
    report(f"wrote {engine_path} and {side.name} in {sidecar.build_seconds:.0f} s")
    return EngineBuildResult(engine_path, side, sidecar, reused=False)
