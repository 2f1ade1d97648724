"""Adopt an engine built by trtexec: check it against its ONNX graph, write its sidecar.

``dpnet-export trt --print-trtexec`` prints the build; trtexec writes no ``.engine.json``,
which the runtime needs. ``dpnet-export trt --adopt ENGINE --model DIR`` (same precision
and range options as the printed line) deserialises the engine on this GPU with this TensorRT,
checks its I/O (names, input or output, dtypes, ranks, static dims) against the graph, and
writes the sidecar with the engine's own optimisation profile (``adopted: true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dpnet_export.onnx_to_engine import EngineBuildOptions, EngineBuildResult, build_target
from dpnet_runtime.backends.trt import capture_logger, import_tensorrt
from dpnet_runtime.backends.trt_sidecar import TensorProfile, sidecar_path
from dpnet_runtime.errors import IncompatibleModelError, ModelFileError
from dpnet_runtime.fileio import atomic_write_text

__all__ = ["adopt_engine"]


def adopt_engine(options: EngineBuildOptions) -> EngineBuildResult:
    """Write the sidecar of an engine built elsewhere (trtexec), after checking it.

    The engine at ``options.engine_path`` is deserialised on this GPU with this TensorRT, and
    its I/O (names, input/output, dtypes, ranks, static dims) must be the ONNX graph's that
    ``options`` selects (the one :func:`onnx_to_trtexec` would print). The sidecar records
    the engine's own optimisation profile and the precision settings of ``options``; the
    engine file is not touched.

    Raises:
        BackendUnavailableError: TensorRT, cuda-python or a GPU is absent.
        ModelFileError: the engine or ONNX file is missing, or TensorRT cannot deserialise it.
        IncompatibleModelError: the engine's I/O differs from the graph's.
        InputError: bad precision options.
    """
    trt = import_tensorrt()
    target = build_target(trt, options)
    engine_path = options.engine_path
    if not engine_path.is_file():
        raise ModelFileError(f"engine {engine_path} does not exist (build it with trtexec first)")
    data = engine_path.read_bytes()
    logger = capture_logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        tail = " | ".join(logger.messages[-3:]) or "no message from TensorRT"
        raise ModelFileError(
            f"TensorRT {trt.__version__} cannot deserialise {engine_path} on {target.gpu.name} "
            f"(built with another TensorRT or for another GPU?): {tail}"
        )
    profiles = _check_engine_io(trt, engine, engine_path, target.plan.onnx_path)
    sidecar = target.sidecar(data, profiles, 0.0, adopted=True)
    side = sidecar_path(engine_path)
    atomic_write_text(side, sidecar.to_json())
    return EngineBuildResult(engine_path, side, sidecar, reused=True)


_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


def _graph_io(path: Path) -> dict[str, tuple[bool, str, tuple[int, ...]]]:
    """name -> (is_input, dtype, dims with -1 for dynamic axes) of a graph's I/O."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    io = {}
    for is_input, infos in ((True, graph.input), (False, graph.output)):
        for info in infos:
            if info.name in initializers:
                continue
            tensor = info.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
            io[info.name] = (is_input, _ONNX_DTYPES.get(tensor.elem_type, "?"), dims)
    return io


def _check_engine_io(
    trt: Any, engine: Any, engine_path: Path, onnx_path: Path
) -> tuple[TensorProfile, ...]:
    """The engine's profile 0, after checking its I/O against the graph's."""
    expected = _graph_io(onnx_path)
    got = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        got[name] = (is_input, dtype, tuple(engine.get_tensor_shape(name)))
    for name in sorted(set(expected) | set(got)):
        if expected.get(name) != got.get(name):
            raise IncompatibleModelError(
                f"engine {engine_path} does not match {onnx_path}: tensor {name!r} is "
                f"{_describe(got.get(name))} in the engine but {_describe(expected.get(name))} "
                "in the graph; build the engine from this graph (dpnet-export trt --print-trtexec)"
            )
    return tuple(
        TensorProfile(name, *(tuple(shape) for shape in engine.get_tensor_profile_shape(name, 0)))
        for name, (is_input, _, _) in got.items()
        if is_input
    )


def _describe(io: tuple[bool, str, tuple[int, ...]] | None) -> str:
    if io is None:
        return "absent"
    is_input, dtype, dims = io
    return f"{'an input' if is_input else 'an output'} {dtype} {list(dims)}"
