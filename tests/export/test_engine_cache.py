"""Engine-cache key, reuse decision and the engine + sidecar write (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dpnet_export.engine_cache import cached_engine, engine_cache_key, write_engine
from dpnet_runtime.backends.cuda import GpuInfo
from dpnet_runtime.backends.trt_sidecar import (
    EngineSidecar,
    TensorProfile,
    read_sidecar,
    sidecar_path,
)
from dpnet_runtime.fileio import sha256_bytes

GPU = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
PROFILES = (TensorProfile("query_image", (1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)),)
SETTINGS = {
    "tensorrt_version": "10.15.1.29",
    "gpu": GPU,
    "precision": "fp16",
    "strongly_typed": False,
    "tf32": False,
    "profiles": PROFILES,
    "workspace_bytes": 4 << 30,
}


def _sidecar(engine: bytes, key: str) -> EngineSidecar:
    return EngineSidecar(
        onnx_file="dpnet.onnx",
        onnx_sha256=sha256_bytes(b"onnx"),
        engine_sha256=sha256_bytes(engine),
        cache_key=key,
        tensorrt_version="10.15.1.29",
        gpu_name=GPU.name,
        compute_capability=GPU.compute_capability,
        precision="fp16",
        strongly_typed=False,
        tf32=False,
        profiles=PROFILES,
        workspace_bytes=4 << 30,
        build_seconds=12.5,
        built_at="2026-11-25T21:00:00+00:00",
        dpnet_version="0.1.0",
    )


def test_key_is_stable_and_hex() -> None:
    key = engine_cache_key(b"onnx", **SETTINGS)
    assert key == engine_cache_key(b"onnx", **SETTINGS)
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tensorrt_version", "10.15.2.1"),
        ("gpu", GpuInfo("NVIDIA H100 80GB HBM3", "8.9")),
        ("gpu", GpuInfo("NVIDIA L4", "9.0")),
        ("precision", "fp32"),
        ("strongly_typed", True),
        ("tf32", True),
        ("profiles", (dataclasses.replace(PROFILES[0], max=(8, 3, 8, 8)),)),
        ("workspace_bytes", 2 << 30),
    ],
)
def test_key_changes_with_every_input(field: str, value: object) -> None:
    base = engine_cache_key(b"onnx", **SETTINGS)
    assert engine_cache_key(b"onnx", **{**SETTINGS, field: value}) != base
    assert engine_cache_key(b"onnx2", **SETTINGS) != base


def test_write_then_reuse(tmp_path: Path) -> None:
    engine_path = tmp_path / "dpnet.engine"
    key = engine_cache_key(b"onnx", **SETTINGS)
    side = write_engine(engine_path, b"serialized engine", _sidecar(b"serialized engine", key))
    assert side == tmp_path / "dpnet.engine.json" == sidecar_path(engine_path)
    assert read_sidecar(side) == _sidecar(b"serialized engine", key)
    assert cached_engine(engine_path, key) == _sidecar(b"serialized engine", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpnet.engine", "dpnet.engine.json"]


def test_no_reuse_for_other_key_truncated_engine_or_broken_sidecar(tmp_path: Path) -> None:
    engine_path = tmp_path / "dpnet.engine"
    assert cached_engine(engine_path, "k") is None
    write_engine(engine_path, b"serialized engine", _sidecar(b"serialized engine", "k"))
    assert cached_engine(engine_path, "other") is None
    engine_path.write_bytes(b"serialized")  # truncated
    assert cached_engine(engine_path, "k") is None
    sidecar_path(engine_path).write_text("{not json")
    assert cached_engine(engine_path, "k") is None
