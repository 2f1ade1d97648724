"""TensorRT backend: :class:`TrtRunner` runs a serialized engine with buffers via cuda-python.

The engine's ``.engine.json`` sidecar (:mod:`dpnet_runtime.backends.trt_sidecar`) is checked
before anything is deserialised. TensorRT and cuda-python are imported on first use
(:func:`import_tensorrt`), so this module imports anywhere.

TensorRT calls, checked against the Python bindings (``pyCore.cpp``, TensorRT 10.0 to 11.1):
``set_tensor_address`` and ``set_input_shape`` return False on failure (checked, and the
address must be 256-byte aligned); ``set_optimization_profile_async`` raises RuntimeError,
which becomes a dpnet error naming the call (:attr:`TrtRunner.backend_errors`); streams are
passed as native handles (:func:`~dpnet_runtime.backends.cuda.native_handle`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Final

import numpy as np

from dpnet_runtime import contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.base import BaseRunner, RunnerMetadata, check_feed, import_optional
from dpnet_runtime.backends.trt_sidecar import (
    EngineSidecar,
    check_engine_bytes,
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.errors import DpnetError, InputError, ModelFileError

__all__ = [
    "TENSOR_ALIGNMENT",
    "DeviceTensor",
    "TensorRTCallError",
    "TrtRunner",
    "capture_logger",
    "import_tensorrt",
    "tensor_spec",
    "tensorrt_major",
]

_LOG = logging.getLogger(__name__)
# NvInferRuntime.h, IExecutionContext::setTensorAddress: "at least 256-byte alignment".
TENSOR_ALIGNMENT: Final = 256


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, imported on first use.

    Raises:
        BackendUnavailableError: TensorRT is not installed (names the ``trt`` extra), or its
            libraries cannot load (the loader's message).
    """
    return import_optional("tensorrt", package="TensorRT")


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


def capture_logger(trt: Any, forward: Callable[[str], None] | None = None) -> Any:
    """A ``trt.ILogger`` that keeps warnings and errors and forwards them to the user.

    Args:
        trt: the ``tensorrt`` module.
        forward: called with each ``[WARNING] ...`` / ``[ERROR] ...`` line as it arrives
            (``None``: this module's ``logging`` logger, at the matching level).

    Returns:
        The logger; ``.messages`` holds every line, ``.error_count`` the errors among them.
    """
    error = int(trt.ILogger.Severity.ERROR)

    class _CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []
            self.error_count = 0

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) > int(trt.ILogger.Severity.WARNING):
                return
            line = f"[{getattr(severity, 'name', severity)}] {msg}"
            self.messages.append(line)
            self.error_count += int(severity) <= error
            if forward is not None:
                forward(line)
            else:
                _LOG.log(logging.ERROR if int(severity) <= error else logging.WARNING, line)

    return _CapturingLogger()


class TensorRTCallError(Exception):
    """A TensorRT binding raised (``PY_ASSERT_RUNTIME_ERROR``): wrapped so that
    :class:`~dpnet_runtime.backends.base.BaseRunner` maps exactly these to dpnet errors,
    while a RuntimeError of dpnet's own (a bug) stays a bug."""


@dataclass(frozen=True)
class DeviceTensor:
    """A tensor already on the GPU, for zero-copy callers of :meth:`TrtRunner.infer_device`.

    TensorRT reads dense row-major tensors only, at 256-byte aligned addresses: both are
    checked (:meth:`TrtRunner.infer_device`).

    Attributes:
        ptr: device pointer (an int, e.g. ``torch_tensor.data_ptr()`` or a cudaMalloc result).
        shape: the tensor's shape.
        dtype: numpy dtype name (``"float32"``).
        strides: strides in elements, as torch and DLPack give them
            (``tuple(torch_tensor.stride())``); ``None`` means C-contiguous.
    """

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    strides: tuple[int, ...] | None = None

    @property
    def is_contiguous(self) -> bool:
        """True when the strides are those of a dense row-major (C-contiguous) tensor.

        >>> DeviceTensor(0, (2, 3), "float32", strides=(1, 2)).is_contiguous
        False
        """
        if self.strides is None:
            return True
        if len(self.strides) != len(self.shape):
            return False
        expected, step = [], 1
        for size in reversed(self.shape):
            expected.append(step)
            step *= size
        # A stride is free on an axis of size 1 (torch reports any value there).
        return all(
            size == 1 or stride == want
            for size, stride, want in zip(self.shape, self.strides, reversed(expected), strict=True)
        )

    def as_proxy(self) -> np.ndarray:
        """A zero-stride host array of this shape and dtype, for the shared input check."""
        return np.lib.stride_tricks.as_strided(
            np.zeros(1, self.dtype), self.shape, (0,) * len(self.shape)
        )


class TrtRunner(BaseRunner):
    """Runs a serialized TensorRT engine on one CUDA stream of one device.

    One execution context with optimisation profile ``profile`` is created in ``activate``;
    each call makes ``device`` current (so a call from any thread allocates and runs there),
    sets the input shapes (``set_input_shape``), reuses device buffers that only grow, and
    runs ``execute_async_v3``. Calls may come from any thread but not at the same time:
    serialise them (``Predictor`` does).

    Args:
        path: the ``.engine`` file; its ``.engine.json`` sidecar must sit beside it.
        device: CUDA device index.
        profile: optimisation profile index (dpnet engines have one).

    >>> with TrtRunner("out/dpnet.engine") as runner:  # doctest: +SKIP
    ...     outputs = runner.infer(feed)
    """

    backend: ClassVar[str] = "trt"
    requires: ClassVar[tuple[str, ...]] = ("tensorrt", "cuda")
    backend_errors: ClassVar[tuple[type[Exception], ...]] = (TensorRTCallError,)

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
        select = self._context.set_optimization_profile_async
        self._call("set_optimization_profile_async", select, self.profile, self._stream.ptr)
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
        cuda.set_device(self.device)
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
        """Zero-copy inference: inputs already on the GPU (on this runner's device), outputs
        left there.

        Args:
            feed: one :class:`DeviceTensor` per input; checked like :meth:`infer`'s feed, and
                each must be C-contiguous at a 256-byte aligned address.

        Returns:
            One :class:`DeviceTensor` per output, pointing into the runner's own buffers:
            valid until the next call; copy it out before calling again.

        Raises:
            InputError: the feed does not match the engine (names, dtype, shape, profile),
                or a tensor is strided or misaligned (the message names it).
        """
        check_feed(
            {name: tensor.as_proxy() for name, tensor in feed.items()}, self.get_input_metadata()
        )
        for name, tensor in feed.items():
            if not tensor.is_contiguous:
                raise InputError(
                    f"input {name!r}: strides {list(tensor.strides or ())} are not those of a "
                    f"C-contiguous {list(tensor.shape)} tensor; TensorRT reads dense row-major "
                    "memory: pass a contiguous copy (torch: .contiguous())"
                )
        cuda.set_device(self.device)
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
        if self._buffers or self._stream is not None:
            cuda.set_device(self.device)  # free on the device the buffers live on
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
        if not self._call("set_input_shape", self._context.set_input_shape, name, shape):
            raise InputError(f"input {name!r}: shape {list(shape)} is outside the engine's profile")
        self._set_address(name, ptr)

    def _set_address(self, name: str, ptr: int) -> None:
        if ptr % TENSOR_ALIGNMENT:
            raise InputError(
                f"tensor {name!r}: address {ptr:#x} is not {TENSOR_ALIGNMENT}-byte aligned, as "
                "TensorRT requires; pass a tensor that starts its own allocation"
            )
        if not self._call("set_tensor_address", self._context.set_tensor_address, name, ptr):
            raise DpnetError(
                f"TensorRT refused the address of tensor {name!r} in {self.path}: {self._log()}"
            )

    def _execute(self) -> dict[str, int]:
        """Bind output buffers sized for the current input shapes, run, return output pointers."""
        pointers = {}
        for name, spec in self.get_output_metadata().items():
            shape = tuple(self._context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize
            pointers[name] = self._buffers[name].ensure(max(1, nbytes))
            self._set_address(name, pointers[name])
        run = self._context.execute_async_v3
        if not self._call("execute_async_v3", run, self._require(self._stream).ptr):
            raise DpnetError(f"TensorRT execute_async_v3 failed on {self.path}: {self._log()}")
        return pointers

    def _call(self, what: str, method: Callable[..., Any], *args: Any) -> Any:
        """Call a TensorRT binding; its RuntimeError becomes :class:`TensorRTCallError`."""
        try:
            return method(*args)
        except RuntimeError as exc:
            raise TensorRTCallError(f"TensorRT {what} failed: {exc} ({self._log()})") from exc

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
