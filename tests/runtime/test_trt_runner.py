"""The TensorRT backend's checks that need no GPU: sidecar, engine bytes, profile bounds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import contract
from dpnet_runtime.backends.base import check_feed, open_runner
from dpnet_runtime.backends.cuda import DeviceBuffer, GpuInfo, gpu_info
from dpnet_runtime.backends.trt import DeviceTensor, tensor_spec, tensorrt_major
from dpnet_runtime.backends.trt_sidecar import (
    EngineSidecar,
    TensorProfile,
    check_engine_bytes,
    check_sidecar,
    read_sidecar,
    sidecar_path,
)
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.errors import (
    BackendUnavailableError,
    DpnetError,
    IncompatibleModelError,
    InputError,
    ModelFileError,
)
from dpnet_runtime.fileio import sha256_bytes

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
ENGINE = b"pretend serialized engine bytes"
SIDECAR = EngineSidecar(
    onnx_file="dpnet_fp16.onnx",
    onnx_sha256=sha256_bytes(b"onnx"),
    engine_sha256=sha256_bytes(ENGINE),
    cache_key="0" * 64,
    tensorrt_version="10.15.1.29",
    gpu_name=H100.name,
    compute_capability=H100.compute_capability,
    precision="fp16",
    strongly_typed=True,
    tf32=False,
    profiles=(TensorProfile("query_image", (1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)),),
    workspace_bytes=4 << 30,
    build_seconds=1.0,
    built_at="2026-11-25T21:00:00+00:00",
    dpnet_version="0.1.0",
)
missing_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)


def _write_sidecar(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "dpnet.engine.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_sidecar_round_trip(tmp_path: Path) -> None:
    path = _write_sidecar(tmp_path, SIDECAR.to_json())
    assert read_sidecar(path) == SIDECAR
    assert sidecar_path(tmp_path / "dpnet.engine") == path


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, ModelFileError, "missing"),
        ("{broken", ModelFileError, "not valid JSON"),
        ({"format": "something-else"}, ModelFileError, "not a dpnet engine sidecar"),
        ({"format": "dpnet-engine", "version": 99}, IncompatibleModelError, "version 99"),
        ({"format": "dpnet-engine", "version": 1}, IncompatibleModelError, "version 1"),
        ({"format": "dpnet-engine", "version": 2}, ModelFileError, "malformed"),
    ],
)
def test_bad_sidecars(tmp_path: Path, content: object, error: type[Exception], match: str) -> None:
    path = tmp_path / "dpnet.engine.json"
    if content is not None:
        _write_sidecar(tmp_path, content)
    with pytest.raises(error, match=match):
        read_sidecar(path)


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        ("10.15.1.29", True),
        ("10.15.1.30", True),  # the build number may differ
        ("10.15.1", True),
        ("10.15.2.29", False),  # a patch release is another TensorRT
        ("10.16.1.29", False),
    ],
)
def test_sidecar_matches_same_tensorrt_release_and_gpu(version: str, accepted: bool) -> None:
    if accepted:
        assert check_sidecar(SIDECAR, tensorrt_version=version, gpu=H100) is None
    else:
        with pytest.raises(
            IncompatibleModelError, match=f"built with TensorRT 10.15.1.29 .*{version}"
        ):
            check_sidecar(SIDECAR, tensorrt_version=version, gpu=H100)


def test_engine_from_another_tensorrt_version_names_both() -> None:
    with pytest.raises(IncompatibleModelError) as info:
        check_sidecar(SIDECAR, tensorrt_version="11.0.0.1", gpu=H100)
    message = str(info.value)
    assert "10.15.1.29" in message and "11.0.0.1" in message and "\n" not in message


@pytest.mark.parametrize("gpu", [GpuInfo("NVIDIA L4", "8.9"), GpuInfo(H100.name, "9.1")])
def test_engine_for_another_gpu_names_both(gpu: GpuInfo) -> None:
    with pytest.raises(IncompatibleModelError, match=f"{H100.name}.*{gpu.name}"):
        check_sidecar(SIDECAR, tensorrt_version="10.15.1.29", gpu=gpu)


def test_truncated_engine_is_a_model_file_error() -> None:
    check_engine_bytes("dpnet.engine", ENGINE, SIDECAR)
    with pytest.raises(ModelFileError, match="truncated"):
        check_engine_bytes("dpnet.engine", ENGINE[:10], SIDECAR)


def test_tensorrt_major() -> None:
    assert tensorrt_major("11.0.0") == 11
    with pytest.raises(InputError):
        tensorrt_major("")


def _specs() -> dict[str, TensorSpec]:
    return {
        contract.SUPPORT_IMAGES: tensor_spec(
            contract.SUPPORT_IMAGES, "float32", (-1, -1, 3, 8, 8), (1, 1, 3, 8, 8), (4, 5, 3, 8, 8)
        ),
        contract.QUERY_IMAGE: tensor_spec(
            contract.QUERY_IMAGE, "float32", (-1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8)
        ),
    }


def test_engine_specs_name_b_and_k() -> None:
    specs = _specs()
    assert specs[contract.SUPPORT_IMAGES].shape == ("B", "K", 3, 8, 8)
    assert tensor_spec("logits", "float32", (-1, 2, -1)).shape == ("B", 2, "logits.2")


def test_shots_outside_the_profile_is_one_line_input_error() -> None:
    feed = {
        contract.SUPPORT_IMAGES: np.zeros((1, 6, 3, 8, 8), np.float32),
        contract.QUERY_IMAGE: np.zeros((1, 3, 8, 8), np.float32),
    }
    with pytest.raises(InputError, match=r"axis 1 must be in \[1, 5\]") as info:
        check_feed(feed, _specs())
    assert "\n" not in str(info.value)


def test_device_tensors_are_checked_like_arrays() -> None:
    good = {
        contract.SUPPORT_IMAGES: DeviceTensor(1 << 20, (2, 5, 3, 8, 8), "float32"),
        contract.QUERY_IMAGE: DeviceTensor(2 << 20, (2, 3, 8, 8), "float32"),
    }
    check_feed({k: v.as_proxy() for k, v in good.items()}, _specs())
    bad = dataclasses.replace(good[contract.QUERY_IMAGE], shape=(3, 3, 8, 8))
    with pytest.raises(InputError, match="axis B"):
        feed = {k: v.as_proxy() for k, v in {**good, contract.QUERY_IMAGE: bad}.items()}
        check_feed(feed, _specs())


@missing_tensorrt
def test_trt_backend_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    engine = tmp_path / "dpnet.engine"
    engine.write_bytes(ENGINE)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed.*dpnet\[trt\]"):
        open_runner("trt", engine, device=0)


def _has_gpu() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False
    err, count = runtime.cudaGetDeviceCount()
    return err == runtime.cudaError_t.cudaSuccess and count > 0


@pytest.mark.skipif(_has_gpu(), reason="a CUDA GPU is present")
def test_cuda_helpers_without_a_gpu_raise_dpnet_errors() -> None:
    # Real cuda-python (or its absence) here, no fake: every return code is checked.
    with pytest.raises(BackendUnavailableError, match=r"CUDA device 0|dpnet\[trt\]"):
        gpu_info(0)
    if importlib.util.find_spec("cuda") and importlib.util.find_spec("cuda.bindings"):
        with pytest.raises(DpnetError, match=r"CUDA cudaMalloc\(64 bytes\) failed: cudaError"):
            DeviceBuffer().ensure(64)
