"""onnx_to_engine and adopt_engine against a FAKE tensorrt and cuda-python (tests/fake_trt.py).

TensorRT cannot run here. The fake records what the build asked for (network flags, builder
flags set and cleared, profile shapes, workspace, timing cache) and can fail the way the real
bindings do, so the precision plan, TF32, timing-cache recovery, profile check, progress and
error reporting are checked end to end; the real API is exercised by the ``trt``/``gpu`` tests.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_trt import FakeEngineTensor, FakeTensorRT, engine_bytes, install_fake_cuda
from onnx import TensorProto, helper

from dpnet_export.engine_adopt import adopt_engine
from dpnet_export.onnx_to_engine import EngineBuildOptions, onnx_to_engine
from dpnet_runtime import contract
from dpnet_runtime.backends.trt import TrtRunner
from dpnet_runtime.backends.trt_sidecar import read_sidecar
from dpnet_runtime.errors import ExportError, IncompatibleModelError, InputError, ModelFileError

SIZE = 8


def _use(monkeypatch: pytest.MonkeyPatch, version: str, **knobs: object) -> FakeTensorRT:
    fake = FakeTensorRT(version, cuda=install_fake_cuda(monkeypatch), **knobs)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    return fake


def _export_dir(folder: Path, *, fp16: bool = True, int8: bool = False) -> Path:
    """dpnet.onnx (and dpnet_fp16.onnx, dpnet_int8_trt.onnx) with episode inputs and a logits /
    mask output, each recording its precision as the exporter does; returns the folder."""
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(contract.SUPPORT_MASKS, f32, ["B", "K", SIZE, SIZE]),
        helper.make_tensor_value_info(contract.QUERY_IMAGE, f32, ["B", 3, SIZE, SIZE]),
    ]
    outputs = [
        helper.make_tensor_value_info(contract.LOGITS, f32, ["B", 2, SIZE, SIZE]),
        helper.make_tensor_value_info(contract.MASK, TensorProto.UINT8, ["B", SIZE, SIZE]),
    ]
    nodes = [
        helper.make_node("Relu", [contract.QUERY_IMAGE], [contract.LOGITS]),
        helper.make_node("Cast", [contract.SUPPORT_MASKS], [contract.MASK], to=2),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs))
    wanted = {"fp32": True, "fp16": fp16, "int8": int8}
    for precision in [name for name, on in wanted.items() if on]:
        meta = {contract.META_INPUT_SIZE: str(SIZE), contract.META_PRECISION: precision}
        helper.set_model_props(model, meta)
        onnx.save(model, folder / contract.find_format("trt", precision).onnx_name("episode"))
    return folder


@pytest.mark.parametrize("version", ["10.15.1.29", "11.0.0.1"])
def test_fake_trt_fp16_builds_the_fp16_graph_strongly_typed_on_10_and_11(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    fake = _use(monkeypatch, version)
    result = onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path), precision="fp16"))
    calls = fake.calls
    assert (calls["parsed"], calls["network_flags"], calls["flags"]) == (
        "dpnet_fp16.onnx",
        1 << 5,
        [],
    )
    assert result.sidecar.strongly_typed and result.sidecar.onnx_file == "dpnet_fp16.onnx"
    assert calls["profile"][contract.SUPPORT_MASKS] == (
        (1, 1, SIZE, SIZE),
        (1, 1, SIZE, SIZE),
        (8, 5, SIZE, SIZE),  # B up to 8 by default: dpnet-serve's --max-batch
    )


@pytest.mark.parametrize("version", ["10.15.1.29", "11.0.0.1"])
def test_fake_trt_int8_builds_the_qdq_graph_strongly_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    fake = _use(monkeypatch, version)
    result = onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path, int8=True), precision="int8"))
    calls = fake.calls
    # Explicit quantization: the Q/DQ scales decide; no INT8 (or FP16) builder flag, TF32 off.
    assert (calls["parsed"], calls["network_flags"], calls["flags"], calls["cleared"]) == (
        "dpnet_int8_trt.onnx",
        1 << 5,
        [],
        ["tf32"],
    )
    assert calls["profile"][contract.QUERY_IMAGE] == (
        (1, 3, SIZE, SIZE),
        (1, 3, SIZE, SIZE),
        (8, 3, SIZE, SIZE),
    )
    assert result.engine_path == tmp_path / "dpnet_int8.engine"
    assert (result.sidecar.precision, result.sidecar.onnx_file) == ("int8", "dpnet_int8_trt.onnx")
    assert result.sidecar.strongly_typed and not (tmp_path / "dpnet.engine").exists()


def test_fake_trt_10_weak_typing_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _use(monkeypatch, "10.15.1.29")
    folder = _export_dir(tmp_path, fp16=False)
    with pytest.raises(InputError, match=r"--precision fp16.* or add --weak-typing"):
        onnx_to_engine(EngineBuildOptions(folder, precision="fp16"))
    options = EngineBuildOptions(folder, precision="fp16", weak_typing=True)
    result = onnx_to_engine(options)
    assert (fake.calls["parsed"], fake.calls["network_flags"], fake.calls["flags"]) == (
        "dpnet.onnx",
        0,
        ["fp16"],
    )
    assert not result.sidecar.strongly_typed and result.sidecar.precision == "fp16"


def test_fake_trt_tf32_is_cleared_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _use(monkeypatch, "10.15.1.29")
    options = EngineBuildOptions(_export_dir(tmp_path))
    result = onnx_to_engine(options)
    assert fake.calls["cleared"] == ["tf32"] and "tf32" not in fake.calls["flags"]
    assert read_sidecar(result.sidecar_path).tf32 is False
    allowed = onnx_to_engine(dataclasses.replace(options, tf32=True))
    assert not allowed.reused  # TF32 is part of the cache key
    assert fake.calls["flags"] == ["tf32"] and allowed.sidecar.tf32 is True
    assert allowed.sidecar.cache_key != result.sidecar.cache_key


def test_fake_trt_engine_cache_and_timing_cache_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _use(monkeypatch, "10.15.1.29")
    cache_file = tmp_path / "timing.cache"
    options = EngineBuildOptions(_export_dir(tmp_path), timing_cache=cache_file)
    result = onnx_to_engine(options)
    assert read_sidecar(result.sidecar_path) == result.sidecar
    assert result.sidecar.graph_metadata[contract.META_INPUT_SIZE] == str(SIZE)
    assert cache_file.read_bytes() == b"+tactics"
    assert onnx_to_engine(options).reused  # engine cache: same key, nothing rebuilt
    rebuilt = onnx_to_engine(dataclasses.replace(options, rebuild=True))
    assert not rebuilt.reused and fake.calls["timing_cache_in"][-1] == b"+tactics"


@pytest.mark.parametrize(
    ("cache", "knobs", "warning"),
    [
        (b"corrupt bytes", {}, "corrupt or from another GPU"),  # TensorRT logs an ERROR
        (b"cache of an A100", {"set_cache_ok": False}, "corrupt or from another GPU"),
        (b"good", {"get_cache_ok": False}, "returned no timing cache"),
    ],
)
def test_fake_trt_timing_cache_failures_warn_and_still_write_the_engine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cache: bytes,
    knobs: dict[str, bool],
    warning: str,
) -> None:
    fake = _use(monkeypatch, "10.15.1.29", **knobs)
    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(cache)
    lines: list[str] = []
    options = EngineBuildOptions(_export_dir(tmp_path), timing_cache=cache_file)
    result = onnx_to_engine(options, progress=lines.append)
    assert any(warning in line for line in lines), lines
    assert result.engine_path.is_file() and result.sidecar_path.is_file()
    if knobs.get("get_cache_ok", True):
        # The unusable cache was replaced by a fresh one, filled by this build.
        assert fake.calls["set_timing_cache"][-1] == (b"", False)
        assert cache_file.read_bytes() == b"+tactics"
    else:
        assert cache_file.read_bytes() == cache


def test_fake_trt_invalid_profile_is_an_export_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1.29", profile_ok=False)
    with pytest.raises(ExportError, match="rejected the optimisation profile"):
        onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)))
    assert not (tmp_path / "dpnet.engine").exists()


def test_fake_trt_build_reports_progress_and_forwards_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1.29")
    lines: list[str] = []
    onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)), progress=lines.append)
    assert any(line.startswith("TensorRT: Building engine") for line in lines), lines
    assert any(line.startswith("TensorRT: Building engine 1/2") for line in lines), lines
    assert "[WARNING] fake: weights of unused layer dropped" in lines


def test_fake_trt_parser_errors_name_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1", parse_ok=False)
    with pytest.raises(
        ExportError, match=r"node 3 'ccm/NonZero_3' \(NonZero\): no importer"
    ) as info:
        onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)))
    assert "NonZero" in info.value.log
    assert not (tmp_path / "dpnet.engine").exists()


def test_fake_trt_failed_build_carries_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1", build_ok=False)
    with pytest.raises(ExportError, match="out of memory") as info:
        onnx_to_engine(EngineBuildOptions(_export_dir(tmp_path)))
    assert "[ERROR] out of memory while building" in info.value.log
    assert not (tmp_path / "dpnet.engine").exists()


def _trtexec_engine(path: Path, *, mask_dtype: str = "uint8") -> Path:
    """What trtexec writes: an engine and no sidecar (profile K up to 3, not dpnet's 5)."""
    tensors = [
        FakeEngineTensor(
            contract.SUPPORT_MASKS,
            "INPUT",
            "float32",
            [-1, -1, SIZE, SIZE],
            [[[1, 1, SIZE, SIZE], [1, 1, SIZE, SIZE], [2, 3, SIZE, SIZE]]],
        ),
        FakeEngineTensor(
            contract.QUERY_IMAGE,
            "INPUT",
            "float32",
            [-1, 3, SIZE, SIZE],
            [[[1, 3, SIZE, SIZE], [1, 3, SIZE, SIZE], [2, 3, SIZE, SIZE]]],
        ),
        FakeEngineTensor(contract.LOGITS, "OUTPUT", "float32", [-1, 2, SIZE, SIZE]),
        FakeEngineTensor(contract.MASK, "OUTPUT", mask_dtype, [-1, SIZE, SIZE]),
    ]
    path.write_bytes(engine_bytes(tensors))
    return path


def test_fake_trt_adopt_a_trtexec_engine_then_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1.29")
    engine = _trtexec_engine(tmp_path / "trtexec.engine")
    options = EngineBuildOptions(_export_dir(tmp_path), out_path=engine, precision="fp16")
    with pytest.raises(ModelFileError, match="sidecar"):
        TrtRunner(engine).activate()  # what the runtime says before adoption
    result = adopt_engine(options)
    sidecar = read_sidecar(tmp_path / "trtexec.engine.json")
    assert sidecar == result.sidecar and sidecar.adopted and sidecar.onnx_file == "dpnet_fp16.onnx"
    assert sidecar.profiles[0].max == (2, 3, SIZE, SIZE)  # the engine's own profile
    assert (sidecar.precision, sidecar.strongly_typed, sidecar.tf32) == ("fp16", True, False)
    with TrtRunner(engine) as runner:
        outputs = runner.infer(
            {
                contract.SUPPORT_MASKS: np.ones((1, 2, SIZE, SIZE), np.float32),
                contract.QUERY_IMAGE: np.ones((1, 3, SIZE, SIZE), np.float32),
            }
        )
    assert outputs[contract.MASK].all() and (outputs[contract.LOGITS][:, 1] == 3.0).all()


def test_fake_trt_adopt_refuses_an_engine_of_another_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use(monkeypatch, "10.15.1.29")
    engine = _trtexec_engine(tmp_path / "dpnet.engine", mask_dtype="int32")
    options = EngineBuildOptions(_export_dir(tmp_path), out_path=engine)
    with pytest.raises(IncompatibleModelError, match=r"'mask' is an output int32 .* uint8"):
        adopt_engine(options)
    assert not (tmp_path / "dpnet.engine.json").exists()
    engine.write_bytes(b"not an engine")
    with pytest.raises(ModelFileError, match="cannot deserialise"):
        adopt_engine(options)
