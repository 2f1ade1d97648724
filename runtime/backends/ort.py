"""ONNX Runtime backend: one ``InferenceSession`` per graph, session options set for latency."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from dpnet_runtime.backends.base import BaseRunner, RunnerMetadata
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.errors import BackendUnavailableError, InputError, ModelFileError
from dpnet_runtime.extras import install_command

__all__ = ["OrtRunner"]

# ONNX Runtime's tensor type strings -> numpy dtype names.
_ORT_DTYPES: Final = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

# Every exception type onnxruntime's binding raises (Fail, InvalidProtobuf, EPFail...).
_ORT_ERRORS: Final = tuple(
    value
    for value in vars(_ort_state).values()
    if isinstance(value, type) and issubclass(value, Exception)
)


class OrtRunner(BaseRunner):
    """Runs an ONNX graph with ONNX Runtime.

    Session options favour single-request latency: all graph optimisations, sequential
    execution (DPNet's graph is one chain; parallel execution only adds scheduling), and
    thread counts the caller chooses (ONNX Runtime's default uses every core).
    ``InferenceSession.run`` is thread-safe, so one active runner may serve several threads.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in priority order; ``None`` means CPU only.
            CUDA / TensorRT providers need the ``gpu`` extra (onnxruntime-gpu).
        intra_op_threads: threads inside one operator (``None``: ONNX Runtime's default).
        inter_op_threads: threads across operators (``None``: ONNX Runtime's default).
        allow_spinning: let idle intra-op threads spin-wait for work. Off by default: a
            Predictor holds up to three sessions, and on a few cores one session's spinning
            threads steal the cores the next one needs (measured on 2 cores: a cached-support
            query 49 -> 13 ms, a paper-config episode 824 -> 639 ms with spinning off).

    >>> with OrtRunner("out/dpnet.onnx", intra_op_threads=2) as runner:  # doctest: +SKIP
    ...     outputs = runner.infer(feed)
    """

    backend: ClassVar[str] = "ort"
    backend_errors: ClassVar[tuple[type[Exception], ...]] = _ORT_ERRORS
    thread_safe: ClassVar[bool] = True
    threads_option: ClassVar[str | None] = "intra_op_threads"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        allow_spinning: bool = False,
    ) -> None:
        super().__init__(path)
        for name, value in (
            ("intra_op_threads", intra_op_threads),
            ("inter_op_threads", inter_op_threads),
        ):
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.allow_spinning = allow_spinning
        self._session: ort.InferenceSession | None = None

    def _activate(self) -> None:
        available = ort.get_available_providers()
        absent = [name for name in self.providers if name not in available]
        if absent:
            raise BackendUnavailableError(
                f"ONNX Runtime execution provider(s) {absent} not available (have {available}); "
                f"GPU providers need onnxruntime-gpu: {install_command('gpu')}"
            )
        self._session = ort.InferenceSession(
            str(self.path), sess_options=self._session_options(), providers=self.providers
        )

    def _session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads is not None:
            options.inter_op_num_threads = self.inter_op_threads
        spinning = "1" if self.allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        return options

    def _metadata(self) -> RunnerMetadata:
        session = self._live_session()
        return RunnerMetadata(
            inputs={arg.name: _spec(arg) for arg in session.get_inputs()},
            outputs={arg.name: _spec(arg) for arg in session.get_outputs()},
            properties=dict(session.get_modelmeta().custom_metadata_map),
        )

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._live_session()
        names = [arg.name for arg in session.get_outputs()]
        # ONNX Runtime allocates fresh output arrays per run, so they are the caller's to keep.
        values = session.run(names, dict(feed))
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}

    def _deactivate(self) -> None:
        self._session = None

    def _live_session(self) -> ort.InferenceSession:
        if self._session is None:
            raise RuntimeError(f"OrtRunner({self.path}) has no session: call activate()")
        return self._session


def _spec(arg: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelFileError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    # ONNX Runtime reports a dynamic axis as its symbol (str) or None when unnamed.
    shape = tuple(dim if isinstance(dim, int | str) else "" for dim in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)
