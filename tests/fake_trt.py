"""A FAKE ``tensorrt`` and a FAKE ``cuda.bindings`` (no GPU or TensorRT wheel can run here).

The fakes follow the real Python bindings' signatures and return conventions, checked
against NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` (10.0 to 11.1) and cuda-python's
``cuda.bindings.runtime``: ``set_tensor_address`` and ``set_input_shape`` return bool,
``set_optimization_profile_async`` raises RuntimeError on failure (``PY_ASSERT_RUNTIME_ERROR``),
``execute_async_v3`` and ``set_optimization_profile_async`` take the stream as an integer,
``add_optimization_profile`` returns -1 for an invalid profile, ``get_timing_cache`` may
return None, cuda-python returns ``(cudaError_t, *values)``.

They also *check* what a runner must get right and a real GPU would punish silently:

- device memory is real host memory at 256-byte aligned addresses; every read or write of the
  fake engine must fall inside one allocation made on the device current *in the calling
  thread* (an out-of-bounds or wrong-device access raises :class:`FakeGpuFaultError`);
- a stream passed to TensorRT must be an int (``get_cuda_native_handle``), not the
  ``cudaStream_t`` object;
- the engine computes a small known function of its inputs, so results prove that the bytes
  went through the right buffers with the right shapes and dtypes.

Engines are JSON: ``{"tensors": [{"name", "mode", "dtype", "shape", "profiles"}]}``. The fake
builder writes one from the parsed ONNX file's I/O and the profile, so an engine "built by
trtexec" can be adopted and run.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ALIGNMENT = 256


class FakeGpuFaultError(AssertionError):
    """What would be an illegal memory access (or silent corruption) on a real GPU."""


# --------------------------------------------------------------------------- cuda.bindings


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101


class MemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStreamHandle:
    """Like ``cudaStream_t``: an object, not an int (``int()`` works but is deprecated)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def getPtr(self) -> int:
        return self.ptr

    def __int__(self) -> int:
        return self.ptr


@dataclass
class FakeCuda:
    """State of the fake GPUs: allocations, streams, the current device of each thread."""

    device_count: int = 2
    allocations: dict[int, tuple[int, int, np.ndarray]] = field(default_factory=dict)
    freed: list[int] = field(default_factory=list)
    streams: dict[int, int] = field(default_factory=dict)  # ptr -> device
    calls: list[tuple[str, Any]] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)

    @property
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def region(self, ptr: int, nbytes: int) -> int:
        """The device of the allocation holding ``[ptr, ptr + nbytes)``; faults otherwise."""
        for start, (size, device, _) in self.allocations.items():
            if start <= ptr and ptr + nbytes <= start + size:
                return device
        raise FakeGpuFaultError(f"access of {nbytes} bytes at {ptr:#x} is outside every allocation")

    def check_device(self, ptr: int, nbytes: int, what: str) -> None:
        device = self.region(ptr, nbytes)
        if device != self.current:
            raise FakeGpuFaultError(
                f"{what}: memory of device {device} used while device {self.current} is current"
            )

    # The cuda.bindings.runtime functions.
    def cudaGetErrorString(self, err: CudaError) -> tuple[CudaError, bytes]:
        return CudaError.cudaSuccess, f"fake {err.name}".encode()

    def cudaGetDeviceCount(self) -> tuple[CudaError, int]:
        return CudaError.cudaSuccess, self.device_count

    def cudaSetDevice(self, device: int) -> tuple[CudaError]:
        self.calls.append(("cudaSetDevice", device))
        if not 0 <= device < self.device_count:
            return (CudaError.cudaErrorInvalidDevice,)
        self._local.device = device
        return (CudaError.cudaSuccess,)

    def cudaGetDeviceProperties(self, device: int) -> tuple[CudaError, Any]:
        if not 0 <= device < self.device_count:
            return CudaError.cudaErrorInvalidDevice, None
        props = types.SimpleNamespace(name=b"Fake GPU\0\0", major=9, minor=0)
        return CudaError.cudaSuccess, props

    def cudaMalloc(self, nbytes: int) -> tuple[CudaError, int]:
        backing = np.zeros(nbytes + ALIGNMENT, np.uint8)
        ptr = -(-backing.ctypes.data // ALIGNMENT) * ALIGNMENT
        self.allocations[ptr] = (nbytes, self.current, backing)
        self.calls.append(("cudaMalloc", nbytes))
        return CudaError.cudaSuccess, ptr

    def cudaFree(self, ptr: int) -> tuple[CudaError]:
        if ptr not in self.allocations:
            return (CudaError.cudaErrorInvalidValue,)
        self.check_device(ptr, 0, "cudaFree")
        del self.allocations[ptr]
        self.freed.append(ptr)
        return (CudaError.cudaSuccess,)

    def cudaStreamCreate(self) -> tuple[CudaError, FakeStreamHandle]:
        handle = FakeStreamHandle(0x5000 + len(self.streams) * 8)
        self.streams[handle.ptr] = self.current
        return CudaError.cudaSuccess, handle

    def cudaStreamSynchronize(self, stream: FakeStreamHandle) -> tuple[CudaError]:
        return (CudaError.cudaSuccess,)

    def cudaStreamDestroy(self, stream: FakeStreamHandle) -> tuple[CudaError]:
        self.streams.pop(stream.ptr)
        return (CudaError.cudaSuccess,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, nbytes: int, kind: MemcpyKind, stream: FakeStreamHandle
    ) -> tuple[CudaError]:
        device_ptr = dst if kind == MemcpyKind.cudaMemcpyHostToDevice else src
        self.check_device(device_ptr, nbytes, kind.name)
        ctypes.memmove(dst, src, nbytes)
        return (CudaError.cudaSuccess,)

    def module(self) -> types.ModuleType:
        runtime = types.ModuleType("cuda.bindings.runtime")
        for name in dir(self):
            if name.startswith("cuda") and name[4].isupper():
                setattr(runtime, name, getattr(self, name))
        runtime.cudaError_t = CudaError  # type: ignore[attr-defined]
        runtime.cudaMemcpyKind = MemcpyKind  # type: ignore[attr-defined]
        return runtime


def install_fake_cuda(monkeypatch: Any, *, native_handle: bool = True) -> FakeCuda:
    """Put a fake ``cuda.bindings.runtime`` (and ``utils``) in ``sys.modules``."""
    state = FakeCuda()
    package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    runtime = state.module()
    package.bindings, bindings.runtime = bindings, runtime  # type: ignore[attr-defined]
    modules = {"cuda": package, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime}
    if native_handle:
        utils = types.ModuleType("cuda.bindings.utils")
        utils.get_cuda_native_handle = lambda obj: obj.getPtr()  # type: ignore[attr-defined]
        bindings.utils = utils  # type: ignore[attr-defined]
        modules["cuda.bindings.utils"] = utils
    else:
        monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state


# --------------------------------------------------------------------------- tensorrt


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    UINT8 = 5


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_NUMPY_TYPES = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT32: np.int32,
    DataType.UINT8: np.uint8,
}
_ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
}


def nptype(dtype: DataType) -> type:
    return _NUMPY_TYPES[dtype]


def _data_type(name: str) -> DataType:
    return next(key for key, value in _NUMPY_TYPES.items() if np.dtype(value).name == name)


def episode_function(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What every fake engine computes: score = sum over channels of the query image times
    the mean support mask; logits = [-score, score]; mask = score > 0 (missing inputs: 1);
    pseudo_count = object pixels of the mask; confidence = the support masks sampled at
    output stride 8 (the contract's feature side)."""
    query = inputs.get("query_image")
    masks = inputs.get("support_masks")
    score = query.astype(np.float32).sum(axis=1) if query is not None else np.float32(1)
    if masks is not None:
        score = score * masks.astype(np.float32).mean(axis=1)
    mask = (score > 0).astype(np.uint8)
    results = {
        "logits": np.stack([-score, score], axis=1).astype(np.float32),
        "mask": mask,
        "pseudo_count": mask.reshape(len(mask), -1).sum(axis=1).astype(np.int32),
    }
    if masks is not None:
        results["confidence"] = (masks[:, :, ::8, ::8] > 0.5).astype(np.uint8)
    return results


@dataclass
class FakeEngineTensor:
    name: str
    mode: str
    dtype: str
    shape: list[int]
    profiles: list[list[list[int]]] = field(default_factory=list)


_SHOTS_INPUTS = frozenset({"support_images", "support_masks", "support_cos_feats", "support_fg",
                           "prototypes"})  # fmt: skip
"""Inputs whose axis 1 is K: an output's dynamic axis 1 takes its size."""


class FakeExecutionContext:
    def __init__(self, engine: FakeCudaEngine) -> None:
        self.engine = engine
        self.device = engine.cuda.current  # a context lives on the device current at creation
        self.profile: int | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple[str, Any]] = engine.calls

    def set_optimization_profile_async(self, index: int, stream_handle: int) -> bool:
        _require_int_stream(stream_handle, "set_optimization_profile_async")
        self.calls.append(("set_optimization_profile_async", index))
        if self.engine.fake.fail_profile_select or not (
            0 <= index < self.engine.num_optimization_profiles
        ):
            raise RuntimeError("Error in set optimization profile async.")
        self.profile = index
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        tensor = self.engine.tensor(name)
        self.calls.append(("set_input_shape", (name, tuple(shape))))
        if tensor is None or tensor.mode != "INPUT" or self.profile is None:
            return False
        low, _, high = tensor.profiles[self.profile]
        if len(shape) != len(low) or not all(
            lo <= dim <= hi for dim, lo, hi in zip(shape, low, high, strict=True)
        ):
            return False
        self.shapes[name] = tuple(int(dim) for dim in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        tensor = self.engine.tensor(name)
        if tensor is None:
            return ()
        if tensor.mode == "INPUT":
            return self.shapes.get(name, tuple(tensor.shape))
        batch = next(iter(self.shapes.values()))[0] if self.shapes else -1
        shots = next((shape[1] for key, shape in self.shapes.items() if key in _SHOTS_INPUTS), -1)
        return tuple(
            dim if dim >= 0 else batch if axis == 0 else shots
            for axis, dim in enumerate(tensor.shape)
        )

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.calls.append(("set_tensor_address", (name, memory)))
        refused = name == self.engine.fake.refuse_address
        if refused or self.engine.tensor(name) is None or memory % ALIGNMENT:
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _require_int_stream(stream_handle, "execute_async_v3")
        self.calls.append(("execute_async_v3", stream_handle))
        cuda = self.engine.cuda
        if cuda.current != self.device:
            raise FakeGpuFaultError(
                f"a context of device {self.device} enqueued while device {cuda.current} is current"
            )
        names = [t.name for t in self.engine.tensors]
        if set(self.addresses) != set(names) or len(self.shapes) != len(self.engine.inputs()):
            return False
        inputs = {}
        for tensor in self.engine.inputs():
            shape, dtype = self.shapes[tensor.name], np.dtype(tensor.dtype)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            cuda.check_device(self.addresses[tensor.name], nbytes, f"read {tensor.name}")
            buffer = (ctypes.c_char * nbytes).from_address(self.addresses[tensor.name])
            inputs[tensor.name] = np.frombuffer(buffer, dtype).reshape(shape).copy()
        results = episode_function(inputs)
        for tensor in self.engine.outputs():
            value = np.ascontiguousarray(results[tensor.name], tensor.dtype)
            if value.shape != self.get_tensor_shape(tensor.name):
                raise FakeGpuFaultError(f"{tensor.name}: computed {value.shape}")
            cuda.check_device(self.addresses[tensor.name], value.nbytes, f"write {tensor.name}")
            ctypes.memmove(self.addresses[tensor.name], value.ctypes.data, value.nbytes)
        return True


def _require_int_stream(handle: object, call: str) -> None:
    if not isinstance(handle, int):
        raise TypeError(f"{call}(): incompatible function arguments (stream {type(handle)})")


class FakeCudaEngine:
    def __init__(self, tensors: list[FakeEngineTensor], fake: FakeTensorRT) -> None:
        self.tensors = tensors
        self.fake = fake
        self.cuda = fake.cuda or FakeCuda()
        self.calls: list[tuple[str, Any]] = []
        self.contexts: list[FakeExecutionContext] = []

    def tensor(self, name: str) -> FakeEngineTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def inputs(self) -> list[FakeEngineTensor]:
        return [t for t in self.tensors if t.mode == "INPUT"]

    def outputs(self) -> list[FakeEngineTensor]:
        return [t for t in self.tensors if t.mode == "OUTPUT"]

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.inputs()[0].profiles) if self.inputs() else 1

    def get_tensor_name(self, index: int) -> str:
        return self.tensors[index].name

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        tensor = self.tensor(name)
        return TensorIOMode[tensor.mode] if tensor else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return _data_type(self.tensor(name).dtype)  # type: ignore[union-attr]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensor(name).shape)  # type: ignore[union-attr]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        tensor = self.tensor(name)
        if tensor is None or tensor.mode != "INPUT":
            raise RuntimeError(f"{name} is not an input")
        return [tuple(shape) for shape in tensor.profiles[profile]]

    def create_execution_context(self) -> FakeExecutionContext:
        context = FakeExecutionContext(self)
        self.contexts.append(context)
        return context


def engine_bytes(tensors: list[FakeEngineTensor]) -> bytes:
    """A fake serialized engine."""
    return json.dumps({"fake-engine": [t.__dict__ for t in tensors]}).encode()


def episode_engine(
    size: int = 8, shots: tuple[int, int, int] = (1, 1, 5), batch: tuple[int, int, int] = (1, 1, 4)
) -> list[FakeEngineTensor]:
    """The I/O of a small episode engine: support masks and query in, logits and mask out."""
    (b0, b1, b2), (k0, k1, k2) = batch, shots
    return [
        FakeEngineTensor(
            "support_masks",
            "INPUT",
            "float32",
            [-1, -1, size, size],
            [[[b0, k0, size, size], [b1, k1, size, size], [b2, k2, size, size]]],
        ),
        FakeEngineTensor(
            "query_image",
            "INPUT",
            "float32",
            [-1, 3, size, size],
            [[[b0, 3, size, size], [b1, 3, size, size], [b2, 3, size, size]]],
        ),
        FakeEngineTensor("logits", "OUTPUT", "float32", [-1, 2, size, size]),
        FakeEngineTensor("mask", "OUTPUT", "uint8", [-1, size, size]),
    ]


@dataclass
class FakeTensorRT:
    """Knobs and records of one fake ``tensorrt`` module."""

    version: str
    cuda: FakeCuda | None = None
    parse_ok: bool = True
    build_ok: bool = True
    profile_ok: bool = True
    set_cache_ok: bool = True
    get_cache_ok: bool = True
    fail_profile_select: bool = False
    refuse_address: str | None = None
    corrupt_marker: bytes = b"corrupt"
    calls: dict[str, Any] = field(default_factory=lambda: {"profile": {}, "flags": []})
    engines: list[FakeCudaEngine] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("tensorrt")
        module.__dict__.update(
            __version__=self.version,
            ILogger=ILogger,
            IProgressMonitor=IProgressMonitor,
            Builder=self._builder_class(),
            OnnxParser=self._parser_class(),
            Runtime=self._runtime_class(),
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
            BuilderFlag=types.SimpleNamespace(FP16="fp16", TF32="tf32", INT8="int8"),
            DataType=DataType,
            TensorIOMode=TensorIOMode,
            nptype=nptype,
            calls=self.calls,
        )
        return module

    def _runtime_class(self) -> type:
        fake = self

        class Runtime:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> FakeCudaEngine | None:
                try:
                    described = json.loads(bytes(data))["fake-engine"]
                except (ValueError, KeyError, TypeError):
                    self.logger.log(Severity.ERROR, "Serialization assertion failed: magic tag")
                    return None
                engine = FakeCudaEngine([FakeEngineTensor(**t) for t in described], fake)
                fake.engines.append(engine)
                return engine

        return Runtime

    def _parser_class(self) -> type:
        fake = self

        class OnnxParser:
            def __init__(self, network: dict[str, Any], logger: Any) -> None:
                self.network = network
                self.num_errors = 0 if fake.parse_ok else 1

            def parse_from_file(self, path: str) -> bool:
                fake.calls["parsed"] = Path(path).name
                model = onnx.load(path)
                initializers = {init.name for init in model.graph.initializer}
                for kind, infos in (("INPUT", model.graph.input), ("OUTPUT", model.graph.output)):
                    for info in infos:
                        if info.name in initializers:
                            continue
                        tensor = info.type.tensor_type
                        dims = [
                            d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim
                        ]
                        dtype = _ONNX_TYPES[tensor.elem_type]
                        self.network["tensors"].append(
                            FakeEngineTensor(info.name, kind, dtype, dims)
                        )
                return fake.parse_ok

            def get_error(self, index: int) -> Any:
                return types.SimpleNamespace(
                    node=lambda: 3,
                    node_name=lambda: "ccm/NonZero_3",
                    node_operator=lambda: "NonZero",
                    desc=lambda: "no importer registered for op: NonZero",
                )

        return OnnxParser

    def _builder_class(self) -> type:
        fake, calls = self, self.calls

        class TimingCache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+tactics"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, list[list[int]]] = {}

            def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
                calls["profile"][name] = (tuple(low), tuple(opt), tuple(high))
                self.shapes[name] = [list(low), list(opt), list(high)]

        class Config:
            def __init__(self, logger: Any) -> None:
                self.logger = logger
                self.cache: TimingCache | None = None
                self.profiles: list[Profile] = []
                self.progress_monitor: Any = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls["workspace"] = (pool, size)

            def set_flag(self, flag: str) -> None:
                calls["flags"].append(flag)

            def clear_flag(self, flag: str) -> None:
                calls.setdefault("cleared", []).append(flag)

            def add_optimization_profile(self, profile: Profile) -> int:
                if not fake.profile_ok:
                    return -1
                self.profiles.append(profile)
                return len(self.profiles) - 1

            def create_timing_cache(self, data: bytes) -> TimingCache:
                calls.setdefault("timing_cache_in", []).append(bytes(data))
                if fake.corrupt_marker in bytes(data):  # NVIDIA/TensorRT#3566: logs, goes on
                    self.logger.log(Severity.ERROR, "Timing cache is corrupted")
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                calls.setdefault("set_timing_cache", []).append((cache.data, ignore_mismatch))
                if cache.data and not fake.set_cache_ok:  # a cache from another device
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self) -> TimingCache | None:
                return self.cache if fake.get_cache_ok else None

        class Builder:
            def __init__(self, logger: Any) -> None:
                self.logger = logger

            def create_network(self, flags: int) -> dict[str, Any]:
                calls["network_flags"] = flags
                return {"tensors": []}

            def create_builder_config(self) -> Config:
                return Config(self.logger)

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: dict[str, Any], config: Config) -> Any:
                monitor = config.progress_monitor
                if monitor is not None:
                    for phase in _BUILD_PHASES:
                        monitor.phase_start(phase, None, 2)
                        for step in range(2):
                            monitor.step_complete(phase, step)
                        monitor.phase_finish(phase)
                self.logger.log(Severity.WARNING, "fake: weights of unused layer dropped")
                if not fake.build_ok:
                    self.logger.log(Severity.ERROR, "out of memory while building")
                    return None
                tensors = network["tensors"]
                for tensor in tensors:
                    for profile in config.profiles:
                        if tensor.name in profile.shapes:
                            tensor.profiles.append(profile.shapes[tensor.name])
                return engine_bytes(tensors)

        return Builder


_BUILD_PHASES = ("Building engine", "Tactic selection")


def install_fake_tensorrt(monkeypatch: Any, fake: FakeTensorRT) -> types.ModuleType:
    module = fake.module()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def calls_named(calls: list[tuple[str, Any]], name: str) -> list[Any]:
    """The arguments of every recorded call ``name``, in order."""
    return [args for call, args in calls if call == name]


# --------------------------------------------------------------------------- other processes

_PROCESS_FAKES: tuple[FakeTensorRT, FakeCuda] | None = None
SHIM_VERSION = "10.15.1.29"


def process_fakes() -> tuple[FakeTensorRT, FakeCuda]:
    """This process's one fake TensorRT and fake GPU, shared by the import shims."""
    global _PROCESS_FAKES
    if _PROCESS_FAKES is None:
        state = FakeCuda()
        _PROCESS_FAKES = (FakeTensorRT(SHIM_VERSION, cuda=state), state)
    return _PROCESS_FAKES


_SHIMS = {
    "tensorrt/__init__.py": "fake_trt.process_fakes()[0].module()",
    "cuda/__init__.py": None,
    "cuda/bindings/__init__.py": None,
    "cuda/bindings/runtime.py": "fake_trt.process_fakes()[1].module()",
    "cuda/bindings/utils.py": None,
}


def write_import_shims(folder: Path) -> Path:
    """Packages ``tensorrt`` and ``cuda.bindings`` that are this module's fakes, for processes
    monkeypatch cannot reach (a dpnet-serve subprocess and its Ray workers): put ``folder`` and
    ``tests/`` first on their ``PYTHONPATH``. Returns ``folder``."""
    for name, source in _SHIMS.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            body = '"""FAKE (tests/fake_trt.py)."""\n'
            if name.endswith("utils.py"):
                body += "\n\ndef get_cuda_native_handle(stream):\n    return stream.getPtr()\n"
        else:
            body = (
                '"""FAKE (tests/fake_trt.py)."""\n\nimport fake_trt\n\n'
                f"_module = {source}\n"
                "globals().update(\n"
                "    {k: v for k, v in vars(_module).items() if not k.startswith('__')}\n"
                ")\n"
                "__version__ = getattr(_module, '__version__', None)\n"
            )
        path.write_text(body)
    return folder
