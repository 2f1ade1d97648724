"""CUDA stream, device buffers and device facts through cuda-python's ``cuda.bindings.runtime``.

cuda-python returns ``(cudaError_t, *values)`` from every call instead of raising; each call
here goes through :func:`check_cuda`, so a failure is a dpnet error naming the call and the
CUDA error. The package is imported on first use: without it (the ``trt`` extra) every helper
raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dpnet_runtime.backends.base import import_optional
from dpnet_runtime.errors import BackendUnavailableError, DpnetError

__all__ = [
    "CudaStream",
    "DeviceBuffer",
    "GpuInfo",
    "check_cuda",
    "copy_device_to_host",
    "copy_host_to_device",
    "cudart",
    "gpu_info",
    "native_handle",
    "set_device",
]


def cudart() -> Any:
    """The ``cuda.bindings.runtime`` module.

    Raises:
        BackendUnavailableError: cuda-python is not installed, or cannot load (the loader's
            message).
    """
    return import_optional("cuda.bindings.runtime", package="cuda-python")


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python object (a ``cudaStream_t``), as TensorRT's calls take it.

    ``cuda.bindings.utils.get_cuda_native_handle`` where it exists (cuda-bindings 12.9.1 and
    13.x deprecate ``int(obj)``), ``int(obj)`` on older 12.x releases.
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


def check_cuda(result: tuple[Any, ...], call: str) -> Any:
    """Unpack a cuda-python result ``(err, *values)``; raise on any error.

    Returns:
        ``None``, the single value, or a tuple of values.

    Raises:
        DpnetError: ``err`` is not ``cudaSuccess``; the message names ``call`` and the error.
    """
    runtime = cudart()
    err, values = result[0], result[1:]
    if err != runtime.cudaError_t.cudaSuccess:
        _, text = runtime.cudaGetErrorString(err)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise DpnetError(f"CUDA {call} failed: {getattr(err, 'name', err)}: {detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class GpuInfo:
    """The facts an engine is tied to.

    Attributes:
        name: device name as CUDA reports it (``"NVIDIA H100 80GB HBM3"``).
        compute_capability: ``"major.minor"`` (``"9.0"``).
    """

    name: str
    compute_capability: str


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``.

    Raises:
        BackendUnavailableError: cuda-python is absent or there is no such device.
    """
    runtime = cudart()
    err, props = runtime.cudaGetDeviceProperties(device)
    if err != runtime.cudaError_t.cudaSuccess:
        raise BackendUnavailableError(
            f"no usable CUDA device {device} ({getattr(err, 'name', err)}); "
            "the TensorRT backend needs an NVIDIA GPU and driver"
        )
    name = (
        props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    )
    return GpuInfo(name=name, compute_capability=f"{props.major}.{props.minor}")


class CudaStream:
    """One CUDA stream on the current device.

    Attributes:
        handle: the ``cudaStream_t`` object (what cuda-python's calls take).
        ptr: its native handle as an int (what TensorRT's ``execute_async_v3`` and
            ``set_optimization_profile_async`` take).
    """

    def __init__(self) -> None:
        self.handle: Any = check_cuda(cudart().cudaStreamCreate(), "cudaStreamCreate")
        self.ptr = native_handle(self.handle)

    def synchronize(self) -> None:
        """Block until every queued copy and kernel of this stream has finished."""
        check_cuda(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        """Destroy the stream; safe to call twice."""
        if self.handle is not None:
            handle, self.handle, self.ptr = self.handle, None, 0
            check_cuda(cudart().cudaStreamDestroy(handle), "cudaStreamDestroy")


class DeviceBuffer:
    """A device allocation that grows on demand and is otherwise reused across calls.

    ``cudaMalloc`` returns memory aligned to at least 256 bytes, as TensorRT requires of every
    tensor address.
    """

    def __init__(self) -> None:
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        """Make the buffer hold at least ``nbytes``; returns the device pointer."""
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(check_cuda(cudart().cudaMalloc(nbytes), f"cudaMalloc({nbytes} bytes)"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        """Release the allocation; safe to call twice."""
        if self.ptr:
            ptr, self.ptr, self.nbytes = self.ptr, 0, 0
            check_cuda(cudart().cudaFree(ptr), "cudaFree")


def copy_host_to_device(dst: int, array: np.ndarray, stream: CudaStream) -> None:
    """Queue a copy of a C-contiguous host array to device pointer ``dst`` on ``stream``."""
    runtime = cudart()
    kind = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
    result = runtime.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, kind, stream.handle)
    check_cuda(result, "cudaMemcpyAsync (host to device)")


def copy_device_to_host(array: np.ndarray, src: int, stream: CudaStream) -> None:
    """Queue a copy from device pointer ``src`` into a C-contiguous host array on ``stream``."""
    runtime = cudart()
    kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
    result = runtime.cudaMemcpyAsync(array.ctypes.data, src, array.nbytes, kind, stream.handle)
    check_cuda(result, "cudaMemcpyAsync (device to host)")


def set_device(device: int) -> None:
    """Make CUDA device ``device`` current for this thread (before any allocation)."""
    check_cuda(cudart().cudaSetDevice(device), f"cudaSetDevice({device})")
