"""onnx_to_engine's TensorRT calls against a FAKE tensorrt module (TensorRT cannot run here).

The fake records what the build asked for (network flags, builder flags, profile shapes,
workspace, timing cache) so the version branch and error reporting are checked end to end;
the real API is exercised by tests/runtime/test_trt_engine.py where TensorRT exists.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from dpnet_export.onnx_to_engine import EngineBuildOptions, onnx_to_engine
from dpnet_runtime import contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.trt import read_sidecar
from dpnet_runtime.errors import ExportError


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3


class _FakeILogger:
    Severity = _Severity

    def __init__(self) -> None:
        pass


class _FakeParserError:
    def node(self) -> int:
        return 3

    def node_name(self) -> str:
        return "ccm/NonZero_3"

    def node_operator(self) -> str:
        return "NonZero"

    def desc(self) -> str:
        return "no importer registered for op: NonZero"


class _FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+tactics"


def _fake_tensorrt(version: str, *, parse_ok: bool = True, build_ok: bool = True) -> Any:
    calls: dict[str, Any] = {"profile": {}, "flags": []}

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls["workspace"] = (pool, size)

        def set_flag(self, flag: str) -> None:
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile: object) -> None:
            calls["profiles_added"] = calls.get("profiles_added", 0) + 1

        def create_timing_cache(self, data: bytes) -> _FakeTimingCache:
            calls["timing_cache_in"] = bytes(data)
            self.cache = _FakeTimingCache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
            return True

        def get_timing_cache(self) -> _FakeTimingCache:
            return self.cache

    class Profile:
        def set_shape(
            self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]
        ) -> None:
            calls["profile"][name] = (low, opt, high)

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> str:
            calls["network_flags"] = flags
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: str, config: Config) -> bytes | None:
            if build_ok:
                return b"fake serialized engine"
            self.logger.log(_Severity.ERROR, "out of memory while building")
            return None

    class OnnxParser:
        def __init__(self, network: str, logger: Any) -> None:
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = Path(path).name
            return parse_ok

        def get_error(self, index: int) -> _FakeParserError:
            return _FakeParserError()

    module = types.ModuleType("tensorrt")
    module.__dict__.update(
        __version__=version,
        ILogger=_FakeILogger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=types.SimpleNamespace(FP16="fp16"),
        calls=calls,
    )
    return module


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "set_device", lambda device: None)
    monkeypatch.setattr(cuda, "gpu_info", lambda device: cuda.GpuInfo("Fake GPU", "9.0"))


def _use(monkeypatch: pytest.MonkeyPatch, module: Any) -> Any:
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module.calls


def _export_dir(folder: Path) -> Path:
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(contract.SUPPORT_IMAGES, f32, ["B", "K", 3, 8, 8]),
        helper.make_tensor_value_info(contract.QUERY_IMAGE, f32, ["B", 3, 8, 8]),
    ]
    outputs = [helper.make_tensor_value_info(contract.LOGITS, f32, None)]
    nodes = [helper.make_node("Relu", [contract.QUERY_IMAGE], [contract.LOGITS])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs))
    helper.set_model_props(model, {contract.META_INPUT_SIZE: "8", contract.META_MAX_SHOTS: "5"})
    for name in ("dpnet.onnx", "dpnet_fp16.onnx"):
        onnx.save(model, folder / name)
    return folder / "dpnet.onnx"


@pytest.mark.usefixtures("fake_gpu")
def test_fake_trt_10_builds_fp32_graph_with_fp16_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _use(monkeypatch, _fake_tensorrt("10.15.1.29"))
    cache_file = tmp_path / "timing.cache"
    options = EngineBuildOptions(_export_dir(tmp_path), fp16=True, timing_cache=cache_file)
    result = onnx_to_engine(options)
    assert (calls["parsed"], calls["network_flags"], calls["flags"]) == ("dpnet.onnx", 0, ["fp16"])
    assert calls["workspace"] == ("workspace", 4 << 30)
    assert calls["profile"][contract.SUPPORT_IMAGES] == (
        (1, 1, 3, 8, 8),
        (1, 1, 3, 8, 8),
        (4, 5, 3, 8, 8),
    )
    assert result.engine_path.read_bytes() == b"fake serialized engine"
    assert read_sidecar(result.sidecar_path) == result.sidecar
    assert (result.sidecar.gpu_name, result.sidecar.precision) == ("Fake GPU", "fp16")
    # The graph's contract metadata travels with the engine, for the runtime to read.
    assert result.sidecar.graph_metadata[contract.META_INPUT_SIZE] == "8"
    assert cache_file.read_bytes() == b"+tactics"
    assert onnx_to_engine(options).reused  # engine cache: same key, nothing rebuilt
    rebuilt = onnx_to_engine(dataclasses.replace(options, rebuild=True))
    assert not rebuilt.reused and calls["timing_cache_in"] == b"+tactics"
    assert onnx_to_engine(EngineBuildOptions(options.onnx_path, fp16=False)).reused is False


@pytest.mark.usefixtures("fake_gpu")
def test_fake_trt_11_builds_fp16_onnx_strongly_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _use(monkeypatch, _fake_tensorrt("11.0.0.1"))
    result = onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path), fp16=True))
    assert (calls["parsed"], calls["network_flags"], calls["flags"]) == (
        "dpnet_fp16.onnx",
        1 << 5,
        [],
    )
    assert result.sidecar.strongly_typed and result.sidecar.onnx_file == "dpnet_fp16.onnx"


@pytest.mark.usefixtures("fake_gpu")
def test_fake_trt_parser_errors_name_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, _fake_tensorrt("10.15.1", parse_ok=False))
    with pytest.raises(
        ExportError, match=r"node 3 'ccm/NonZero_3' \(NonZero\): no importer"
    ) as info:
        onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)))
    assert "NonZero" in info.value.log
    assert not (tmp_path / "dpnet.engine").exists()


@pytest.mark.usefixtures("fake_gpu")
def test_fake_trt_failed_build_carries_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, _fake_tensorrt("10.15.1", build_ok=False))
    with pytest.raises(ExportError, match="out of memory") as info:
        onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)))
    assert "[ERROR] out of memory while building" in info.value.log
    assert not (tmp_path / "dpnet.engine").exists()
