"""TensorRT backend: a serialized engine, its ``.engine.json`` sidecar, buffers via cuda-python.

An engine only runs on the TensorRT version and GPU it was built for, so the sidecar written
next to it by ``dpnet-export trt`` records both (plus the ONNX and engine sha256 and the
optimisation profile); :class:`TrtRunner` checks them before deserialising anything, which
turns TensorRT's opaque deserialisation failure into a message naming both sides.

TensorRT and cuda-python are imported on first use (:func:`import_tensorrt`), so this module
imports anywhere; the sidecar functions need neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from dpnet_runtime import contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.base import BaseRunner, RunnerMetadata, check_feed
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.errors import (
    BackendUnavailableError,
    DpnetError,
    IncompatibleModelError,
    InputError,
    ModelFileError,
)
from dpnet_runtime.fileio import sha256_bytes

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "DeviceTensor",
    "EngineSidecar",
    "TensorProfile",
    "TrtRunner",
    "capture_logger",
    "check_engine_bytes",
    "check_sidecar",
    "import_tensorrt",
    "read_sidecar",
    "sidecar_path",
    "tensor_spec",
    "tensorrt_major",
]

SIDECAR_FORMAT: Final = "dpnet-engine"
SIDECAR_VERSION: Final = 1


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, imported on first use.

    Raises:
        BackendUnavailableError: TensorRT is not installed (names the ``trt`` extra).
    """
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed; on a machine with an NVIDIA GPU run: "
            "pip install 'dpnet[trt]'"
        ) from exc
    return tensorrt


def tensorrt_major(version: str) -> int:
    """Major version of a TensorRT version string.

    >>> tensorrt_major("10.15.1.29")
    10

    Raises:
        InputError: the string does not start with an integer.
    """
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise InputError(f"not a TensorRT version: {version!r} (expected e.g. '10.15.1')")
    return int(head)


def capture_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors in ``.messages`` (for error reports)."""

    class _CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    return _CapturingLogger()


@dataclass(frozen=True)
class TensorProfile:
    """Optimisation-profile shapes of one input (TensorRT ``set_shape(name, min, opt, max)``)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from and for: the ``dpnet.engine.json`` beside it.

    Attributes:
        onnx_file: file name of the ONNX graph the engine was parsed from.
        onnx_sha256: sha256 of that file's bytes.
        engine_sha256: sha256 of the serialized engine (detects truncation).
        cache_key: the engine-cache key (see ``dpnet_export.engine_cache``).
        tensorrt_version: ``trt.__version__`` at build time.
        gpu_name: CUDA device name at build time.
        compute_capability: ``"major.minor"`` of that device.
        precision: ``"fp16"`` or ``"fp32"``.
        strongly_typed: built as a strongly typed network (precision from the graph).
        profiles: one :class:`TensorProfile` per input.
        workspace_bytes: the builder's workspace pool limit.
        build_seconds: wall time of the build.
        built_at: UTC ISO-8601 time of the build.
        dpnet_version: dpnet version that built it.
        graph_metadata: the ONNX graph's ``metadata_props`` (input size, mean/std, max shots,
            ...), so a predictor reads the same contract from an engine as from its graph.
    """

    onnx_file: str
    onnx_sha256: str
    engine_sha256: str
    cache_key: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    profiles: tuple[TensorProfile, ...]
    workspace_bytes: int
    build_seconds: float
    built_at: str
    dpnet_version: str
    graph_metadata: dict[str, str] = field(default_factory=dict)
    format: str = field(default=SIDECAR_FORMAT)
    version: int = field(default=SIDECAR_VERSION)

    def to_json(self) -> str:
        """Indented JSON text of every field."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineSidecar:
        """Build from parsed JSON; raises ``KeyError`` / ``TypeError`` on a malformed dict."""
        fields = dict(data)
        fields["profiles"] = tuple(
            TensorProfile(p["name"], tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
            for p in fields["profiles"]
        )
        return cls(**fields)


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """The sidecar of an engine: ``dpnet.engine`` -> ``dpnet.engine.json``."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | os.PathLike[str]) -> EngineSidecar:
    """Read and validate an engine sidecar.

    Raises:
        ModelFileError: missing, not JSON, another format or version, or fields missing.
    """
    path = Path(path)
    rebuild = "rebuild the engine with `dpnet-export trt`"
    if not path.is_file():
        raise ModelFileError(f"engine sidecar {path} is missing; {rebuild}")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"engine sidecar {path} is not valid JSON ({exc}); {rebuild}") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{path} is not a dpnet engine sidecar; {rebuild}")
    if data.get("version") != SIDECAR_VERSION:
        raise IncompatibleModelError(
            f"engine sidecar {path} has version {data.get('version')}, this dpnet reads "
            f"version {SIDECAR_VERSION}; {rebuild}"
        )
    try:
        return EngineSidecar.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"engine sidecar {path} is malformed ({exc!r}); {rebuild}") from exc


def check_sidecar(sidecar: EngineSidecar, *, tensorrt_version: str, gpu: cuda.GpuInfo) -> None:
    """Check that an engine was built for this TensorRT (major.minor.patch) and this GPU.

    Raises:
        IncompatibleModelError: naming what the engine was built for and what is running.
    """
    built = sidecar.tensorrt_version.split(".")[:3]
    if built != tensorrt_version.split(".")[:3]:
        raise IncompatibleModelError(
            f"the engine was built with TensorRT {sidecar.tensorrt_version} but TensorRT "
            f"{tensorrt_version} is running; rebuild it here with `dpnet-export trt`"
        )
    if (sidecar.gpu_name, sidecar.compute_capability) != (gpu.name, gpu.compute_capability):
        raise IncompatibleModelError(
            f"the engine was built for {sidecar.gpu_name} (compute capability "
            f"{sidecar.compute_capability}) but this GPU is {gpu.name} (compute capability "
            f"{gpu.compute_capability}); rebuild it on this GPU with `dpnet-export trt`"
        )


def check_engine_bytes(
    engine_path: str | os.PathLike[str], data: bytes, sidecar: EngineSidecar
) -> None:
    """Check the engine's bytes against the sha256 its sidecar recorded.

    Raises:
        ModelFileError: the engine is truncated or was replaced after the build.
    """
    if sha256_bytes(data) != sidecar.engine_sha256:
        raise ModelFileError(
            f"engine {engine_path} ({len(data)} bytes) does not match its sidecar's sha256: "
            "it is truncated or was modified; rebuild it with `dpnet-export trt`"
        )


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor already on the GPU, for zero-copy callers of :meth:`TrtRunner.infer_device`.

    Attributes:
        ptr: device pointer (an int, e.g. ``torch_tensor.data_ptr()`` or a cudaMalloc result).
        shape: the tensor's shape.
        dtype: numpy dtype name (``"float32"``).
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: str

    def as_proxy(self) -> np.ndarray:
        """A zero-stride host array of this shape and dtype, for the shared input check."""
        return np.lib.stride_tricks.as_strided(
            np.zeros(1, self.dtype), self.shape, (0,) * len(self.shape)
        )


class TrtRunner(BaseRunner):
    """Runs a serialized TensorRT engine on one CUDA stream.

    One execution context with optimisation profile ``profile`` is created in ``activate``;
    each call sets the input shapes (``set_input_shape``), reuses device buffers that only
    grow, and runs ``execute_async_v3``. Not thread-safe: one runner per thread.

    Args:
        path: the ``.engine`` file; its ``.engine.json`` sidecar must sit beside it.
        device: CUDA device index.
        profile: optimisation profile index (dpnet engines have one).

    >>> with TrtRunner("out/dpnet.engine") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer(feed)
    """

    backend: ClassVar[str] = "trt"

    def __init__(self, path: str | os.PathLike[str], *, device: int = 0, profile: int = 0) -> None:
        super().__init__(path)
        if device < 0 or profile < 0:
            raise InputError(
                f"device and profile must be >= 0, got device={device}, profile={profile}"
            )
        self.device = device
        self.profile = profile
        self._trt: Any = None
        self._logger: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: cuda.CudaStream | None = None
        self._sidecar: EngineSidecar | None = None
        self._buffers: dict[str, cuda.DeviceBuffer] = {}

    def _activate(self) -> None:
        trt = self._trt = import_tensorrt()
        sidecar = self._sidecar = read_sidecar(sidecar_path(self.path))
        cuda.set_device(self.device)
        check_sidecar(sidecar, tensorrt_version=trt.__version__, gpu=cuda.gpu_info(self.device))
        data = self.path.read_bytes()
        check_engine_bytes(self.path, data, sidecar)
        self._logger = capture_logger(trt)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(data)
        if self._engine is None:
            raise ModelFileError(f"TensorRT cannot deserialise {self.path}: {self._log()}")
        if self.profile >= self._engine.num_optimization_profiles:
            raise InputError(
                f"profile {self.profile} does not exist; {self.path} has "
                f"{self._engine.num_optimization_profiles} optimisation profile(s)"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise DpnetError(
                f"TensorRT cannot create an execution context for {self.path}: {self._log()}"
            )
        self._stream = cuda.CudaStream()
        self._context.set_optimization_profile_async(self.profile, self._stream.handle)
        self._buffers = {name: cuda.DeviceBuffer() for name in self._tensor_names()}

    def _metadata(self) -> RunnerMetadata:
        trt, engine = self._trt, self._engine
        inputs: dict[str, TensorSpec] = {}
        outputs: dict[str, TensorSpec] = {}
        for name in self._tensor_names():
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            shape = tuple(engine.get_tensor_shape(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                low, _, high = engine.get_tensor_profile_shape(name, self.profile)
                inputs[name] = tensor_spec(name, dtype, shape, tuple(low), tuple(high))
            else:
                outputs[name] = tensor_spec(name, dtype, shape)
        sidecar = asdict(self._require(self._sidecar))
        skipped = ("profiles", "graph_metadata")
        properties = {key: str(value) for key, value in sidecar.items() if key not in skipped}
        properties.update(sidecar["graph_metadata"])
        properties[contract.META_PRECISION] = str(sidecar["precision"])
        return RunnerMetadata(inputs, outputs, properties)

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        stream = self._require(self._stream)
        for name, array in feed.items():
            host = np.ascontiguousarray(array)
            ptr = self._buffers[name].ensure(host.nbytes)
            cuda.copy_host_to_device(ptr, host, stream)
            self._bind_input(name, ptr, host.shape)
        pointers = self._execute()
        specs = self.get_output_metadata()
        results = {}
        for name, ptr in pointers.items():
            results[name] = np.empty(tuple(self._context.get_tensor_shape(name)), specs[name].dtype)
            cuda.copy_device_to_host(results[name], ptr, stream)
        stream.synchronize()
        return results

    def infer_device(self, feed: Mapping[str, DeviceTensor]) -> dict[str, DeviceTensor]:
        """Zero-copy inference: inputs already on the GPU, outputs left there.

        Args:
            feed: one :class:`DeviceTensor` per input; checked like :meth:`infer`'s feed.

        Returns:
            One :class:`DeviceTensor` per output, pointing into the runner's own buffers:
            valid until the next call; copy it out before calling again.

        Raises:
            InputError: the feed does not match the engine (names, dtype, shape, profile).
        """
        check_feed(
            {name: tensor.as_proxy() for name, tensor in feed.items()}, self.get_input_metadata()
        )
        for name, tensor in feed.items():
            self._bind_input(name, tensor.ptr, tensor.shape)
        pointers = self._execute()
        self._require(self._stream).synchronize()
        specs = self.get_output_metadata()
        return {
            name: DeviceTensor(ptr, tuple(self._context.get_tensor_shape(name)), specs[name].dtype)
            for name, ptr in pointers.items()
        }

    def _deactivate(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers = {}
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        # Context before engine: TensorRT requires destroying them in reverse creation order.
        self._context = None
        self._engine = None

    def _bind_input(self, name: str, ptr: int, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(name, shape):
            raise InputError(f"input {name!r}: shape {list(shape)} is outside the engine's profile")
        self._context.set_tensor_address(name, ptr)

    def _execute(self) -> dict[str, int]:
        """Bind output buffers sized for the current input shapes, run, return output pointers."""
        pointers = {}
        for name, spec in self.get_output_metadata().items():
            shape = tuple(self._context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize
            pointers[name] = self._buffers[name].ensure(max(1, nbytes))
            self._context.set_tensor_address(name, pointers[name])
        if not self._context.execute_async_v3(self._require(self._stream).handle):
            raise DpnetError(f"TensorRT execute_async_v3 failed on {self.path}: {self._log()}")
        return pointers

    def _tensor_names(self) -> list[str]:
        return [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]

    def _log(self) -> str:
        messages = self._logger.messages if self._logger is not None else []
        return " | ".join(messages[-5:]) or "no message from TensorRT"

    def _require(self, value: Any) -> Any:
        if value is None:
            raise RuntimeError(f"TrtRunner({self.path}) is not active: call activate()")
        return value


def tensor_spec(
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    min_shape: tuple[int, ...] | None = None,
    max_shape: tuple[int, ...] | None = None,
) -> TensorSpec:
    """TensorSpec of an engine tensor: TensorRT's ``-1`` axes become named dynamic axes.

    Dynamic axes take the contract's symbolic names (``contract.symbolic_axis``: ``B`` and, for
    the support inputs and cache, ``K``), so the shared input check also enforces that every
    input agrees on B and K.

    >>> tensor_spec("support_masks", "float32", (-1, -1, 321, 321)).shape
    ('B', 'K', 321, 321)
    """
    named: list[int | str] = []
    for axis, dim in enumerate(shape):
        symbol = contract.symbolic_axis(name, axis)
        if dim >= 0:
            named.append(dim)
        elif symbol in (contract.BATCH_AXIS, contract.SHOTS_AXIS):
            named.append(symbol)
        else:
            named.append(f"{name}.{axis}")
    return TensorSpec(name, dtype, tuple(named), min_shape, max_shape)
