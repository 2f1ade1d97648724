"""The ``.engine.json`` sidecar of a TensorRT engine: what it was built from, for and how.

An engine only runs on the TensorRT version and GPU it was built for, so ``dpnet-export trt``
(or ``--adopt`` for an engine built by trtexec) writes a sidecar beside it recording both,
the ONNX and engine sha256, the optimisation profile and the precision settings (fp32, fp16
or int8; strong or weak typing; TF32). :class:`~dpnet_runtime.backends.trt.TrtRunner` checks
it before deserialising anything, which turns TensorRT's opaque deserialisation failure into a
message naming both sides.
Needs neither TensorRT nor CUDA.

Version 2 added ``tf32`` and ``adopted``; version 1 engines were built with TensorRT's
default TF32 on, so they are refused with a request to rebuild.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from dpnet_runtime.backends.cuda import GpuInfo
from dpnet_runtime.errors import IncompatibleModelError, ModelFileError
from dpnet_runtime.fileio import sha256_bytes

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "EngineSidecar",
    "TensorProfile",
    "check_engine_bytes",
    "check_sidecar",
    "read_sidecar",
    "sidecar_path",
]

SIDECAR_FORMAT: Final = "dpnet-engine"
SIDECAR_VERSION: Final = 2


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
        precision: the engine's precision, its ``trt`` row's in ``contract.FORMATS`` (``fp16``).
        strongly_typed: built as a strongly typed network (precision from the graph); False
            for the TensorRT 10 weak-typing fallback (``BuilderFlag.FP16``).
        tf32: whether FP32 layers were allowed TF32 (10-bit mantissa) inner products.
        profiles: one :class:`TensorProfile` per input.
        workspace_bytes: the builder's workspace pool limit.
        build_seconds: wall time of the build (0 for an adopted engine).
        built_at: UTC ISO-8601 time of the build.
        dpnet_version: dpnet version that built it.
        graph_metadata: the ONNX graph's ``metadata_props`` (input size, mean/std, max shots,
            ...), so a predictor reads the same contract from an engine as from its graph.
        adopted: built elsewhere (trtexec) and adopted with ``dpnet-export trt --adopt``,
            after checking its I/O against the ONNX graph.
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
    tf32: bool
    profiles: tuple[TensorProfile, ...]
    workspace_bytes: int
    build_seconds: float
    built_at: str
    dpnet_version: str
    graph_metadata: dict[str, str] = field(default_factory=dict)
    adopted: bool = False
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


def check_sidecar(sidecar: EngineSidecar, *, tensorrt_version: str, gpu: GpuInfo) -> None:
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
