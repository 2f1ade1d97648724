"""Engine-cache key, cache lookup and the atomic write of an engine with its sidecar.

A TensorRT build takes minutes; the result depends only on the ONNX bytes, the TensorRT
version, the GPU (name and compute capability) and the build settings (precision, typing, TF32,
profile, workspace). The key hashes exactly
those, the sidecar records it, and a build whose key matches an existing engine (whose bytes
still match the sidecar's sha256) reuses that engine instead of building again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from dpnet_runtime.backends.cuda import GpuInfo
from dpnet_runtime.backends.trt_sidecar import (
    EngineSidecar,
    TensorProfile,
    read_sidecar,
    sidecar_path,
)
from dpnet_runtime.errors import ModelFileError
from dpnet_runtime.fileio import atomic_write_files, sha256_file

__all__ = ["cached_engine", "engine_cache_key", "write_engine"]


def engine_cache_key(
    onnx_bytes: bytes,
    *,
    tensorrt_version: str,
    gpu: GpuInfo,
    precision: str,
    strongly_typed: bool,
    tf32: bool,
    profiles: Sequence[TensorProfile],
    workspace_bytes: int,
) -> str:
    """sha256 of the ONNX bytes, the TensorRT version, the GPU and every build setting.

    Args:
        onnx_bytes: the bytes of the graph TensorRT parses.
        tensorrt_version: ``trt.__version__``.
        gpu: device name and compute capability.
        precision: ``"fp16"`` or ``"fp32"``.
        strongly_typed: whether the network is strongly typed.
        tf32: whether FP32 layers may use TF32 inner products (``BuilderFlag.TF32``).
        profiles: the optimisation profile, one entry per input.
        workspace_bytes: the workspace pool limit (it bounds the tactics TensorRT may pick).

    Returns:
        64 hex digits.
    """
    settings = {
        "tensorrt_version": tensorrt_version,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "tf32": tf32,
        "profiles": [asdict(profile) for profile in profiles],
        "workspace_bytes": workspace_bytes,
    }
    digest = hashlib.sha256(onnx_bytes)
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def cached_engine(engine_path: str | os.PathLike[str], key: str) -> EngineSidecar | None:
    """The sidecar of a reusable engine at ``engine_path``, or ``None`` when it must be built.

    An engine is reused when it and its sidecar exist, the sidecar's key is ``key`` and the
    engine's bytes still match the recorded sha256. A missing, stale or broken pair is not an
    error here: it is simply rebuilt.
    """
    path = Path(engine_path)
    if not path.is_file():
        return None
    try:
        sidecar = read_sidecar(sidecar_path(path))
    except ModelFileError:
        return None
    if sidecar.cache_key != key or sha256_file(path) != sidecar.engine_sha256:
        return None
    return sidecar


def write_engine(
    engine_path: str | os.PathLike[str], engine: bytes, sidecar: EngineSidecar
) -> Path:
    """Swap in the engine and its sidecar as one set; returns the sidecar's path.

    Both are written in full before either is renamed, so a failure leaves the earlier pair
    as it was. The sidecar is renamed last: a crash between the two renames leaves a new engine
    with the old sidecar, whose sha256 the runtime and the cache both reject.
    """
    path = Path(engine_path)
    side = sidecar_path(path)
    atomic_write_files({path: engine, side: sidecar.to_json().encode("utf-8")})
    return side
