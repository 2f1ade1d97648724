"""TrtRunner and the cuda helpers against a FAKE tensorrt runtime and FAKE cuda-python.

The fakes (tests/fake_trt.py) keep device memory in real host memory and fault on what a GPU
would punish: out-of-bounds or wrong-device accesses, a context enqueued on another device,
a stream passed as an object. The fake engine computes a known function of its inputs, so
each result proves the bytes went through the right buffers, shapes and dtypes.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fake_trt import (
    FakeCuda,
    FakeTensorRT,
    calls_named,
    engine_bytes,
    episode_engine,
    episode_function,
    install_fake_cuda,
)

from dpnet_runtime import contract
from dpnet_runtime.backends import cuda
from dpnet_runtime.backends.trt import DeviceTensor, TrtRunner, import_tensorrt
from dpnet_runtime.backends.trt_sidecar import EngineSidecar, sidecar_path
from dpnet_runtime.errors import BackendUnavailableError, DpnetError, InputError, ModelFileError
from dpnet_runtime.fileio import sha256_bytes

SIZE = 8


def _engine_file(folder: Path, tensors: list | None = None) -> Path:
    path = folder / "dpnet.engine"
    data = engine_bytes(tensors or episode_engine(SIZE))
    path.write_bytes(data)
    sidecar = EngineSidecar(
        onnx_file="dpnet.onnx", onnx_sha256="0", engine_sha256=sha256_bytes(data),
        cache_key="k", tensorrt_version="10.15.1.29", gpu_name="Fake GPU",
        compute_capability="9.0", precision="fp32", strongly_typed=False, tf32=False,
        profiles=(), workspace_bytes=1, build_seconds=0.0, built_at="now", dpnet_version="0",
    )  # fmt: skip
    sidecar_path(path).write_text(sidecar.to_json())
    return path


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTensorRT, FakeCuda]:
    state = install_fake_cuda(monkeypatch)
    fake = FakeTensorRT("10.15.1.29", cuda=state)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    return fake, state


def _feed(batch: int, shots: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        contract.SUPPORT_MASKS: (rng.random((batch, shots, SIZE, SIZE)) > 0.5).astype(np.float32),
        contract.QUERY_IMAGE: rng.standard_normal((batch, 3, SIZE, SIZE), dtype=np.float32),
    }


def test_fake_runner_results_call_sequence_and_buffer_reuse(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    fake, state = fake_gpu
    runner = TrtRunner(_engine_file(tmp_path))
    with runner:
        specs = runner.get_input_metadata()
        assert specs[contract.SUPPORT_MASKS].shape == ("B", "K", SIZE, SIZE)
        assert specs[contract.SUPPORT_MASKS].max_shape == (4, 5, SIZE, SIZE)
        assert runner.get_output_metadata()[contract.MASK].dtype == "uint8"
        for batch, shots in [(2, 3), (1, 1), (2, 3)]:
            feed = _feed(batch, shots, seed=batch * 10 + shots)
            outputs = runner.infer(feed)
            expected = episode_function(feed)
            assert outputs[contract.MASK].dtype == np.uint8
            np.testing.assert_array_equal(outputs[contract.MASK], expected[contract.MASK])
            np.testing.assert_allclose(outputs[contract.LOGITS], expected[contract.LOGITS])
        mallocs = calls_named(state.calls, "cudaMalloc")
        assert len(mallocs) == 4  # one per tensor, sized by the first (largest) call: reused
        assert not state.freed
    engine = fake.engines[0]
    sequence = [name for name, _ in engine.calls]
    assert sequence[0] == "set_optimization_profile_async"  # profile before any shape
    assert calls_named(engine.calls, "set_optimization_profile_async") == [0]
    assert sequence.count("execute_async_v3") == 3
    assert calls_named(engine.calls, "set_input_shape")[:2] == [
        (contract.SUPPORT_MASKS, (2, 3, SIZE, SIZE)),
        (contract.QUERY_IMAGE, (2, 3, SIZE, SIZE)),
    ]
    assert not state.allocations and len(state.freed) == 4 and not state.streams


def test_fake_runner_selects_the_requested_profile(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    fake, _ = fake_gpu
    tensors = episode_engine(SIZE)
    for tensor, second in zip(tensors[:2], episode_engine(SIZE, shots=(2, 2, 2))[:2], strict=True):
        tensor.profiles += second.profiles
    path = _engine_file(tmp_path, tensors)
    with TrtRunner(path, profile=1) as runner:
        assert runner.get_input_metadata()[contract.SUPPORT_MASKS].min_shape == (1, 2, SIZE, SIZE)
        with pytest.raises(InputError, match=r"axis 1 must be in \[2, 2\]"):
            runner.infer(_feed(1, 1))
        runner.infer(_feed(1, 2))
    assert calls_named(fake.engines[0].calls, "set_optimization_profile_async") == [1]
    with pytest.raises(InputError, match="profile 2 does not exist"):
        TrtRunner(path, profile=2).activate()


def test_fake_tensorrt_runtime_error_becomes_a_dpnet_error(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    fake, state = fake_gpu
    fake.fail_profile_select = True  # pyCore.cpp: PY_ASSERT_RUNTIME_ERROR
    with pytest.raises(ModelFileError, match="set_optimization_profile_async failed") as info:
        TrtRunner(_engine_file(tmp_path)).activate()
    assert isinstance(info.value.__cause__, Exception) and not state.streams  # cleaned up


def test_fake_refused_tensor_address_names_the_tensor(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    fake, _ = fake_gpu
    fake.refuse_address = contract.LOGITS
    with TrtRunner(_engine_file(tmp_path)) as runner, pytest.raises(DpnetError) as info:
        runner.infer(_feed(1, 1))
    assert "'logits'" in str(info.value) and "refused" in str(info.value)


def _device_feed(state: FakeCuda, feed: dict[str, np.ndarray]) -> dict[str, DeviceTensor]:
    tensors = {}
    stream = cuda.CudaStream()
    for name, array in feed.items():
        ptr = cuda.DeviceBuffer().ensure(array.nbytes)
        cuda.copy_host_to_device(ptr, array, stream)
        tensors[name] = DeviceTensor(ptr, array.shape, array.dtype.name)
    stream.close()
    return tensors


def test_fake_infer_device_runs_and_rejects_misaligned_or_strided_tensors(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    _, state = fake_gpu
    feed = _feed(1, 2)
    with TrtRunner(_engine_file(tmp_path)) as runner:
        tensors = _device_feed(state, feed)
        out = runner.infer_device(tensors)[contract.LOGITS]
        host = np.empty(out.shape, out.dtype)
        stream = cuda.CudaStream()
        cuda.copy_device_to_host(host, out.ptr, stream)
        np.testing.assert_allclose(host, episode_function(feed)[contract.LOGITS])
        query = tensors[contract.QUERY_IMAGE]
        shifted = DeviceTensor(query.ptr + 4, query.shape, query.dtype)
        with pytest.raises(InputError, match=r"'query_image': address .* 256-byte aligned"):
            runner.infer_device({**tensors, contract.QUERY_IMAGE: shifted})
        # A transposed view: same memory, strides in elements of a [.., W, H] layout.
        strided = DeviceTensor(query.ptr, query.shape, query.dtype, strides=(192, 64, 1, SIZE))
        with pytest.raises(InputError, match=r"'query_image': strides .* not .* C-contiguous"):
            runner.infer_device({**tensors, contract.QUERY_IMAGE: strided})
        dense = DeviceTensor(query.ptr, query.shape, query.dtype, strides=(192, 64, SIZE, 1))
        runner.infer_device({**tensors, contract.QUERY_IMAGE: dense})
        stream.close()


def test_fake_runner_on_device_1_called_from_another_thread(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda]
) -> None:
    _, state = fake_gpu
    runner = TrtRunner(_engine_file(tmp_path), device=1)
    results: dict[str, object] = {}

    def work() -> None:  # a fresh thread: CUDA's current device is 0 there
        try:
            results["out"] = runner.infer(_feed(1, 1))
        except BaseException as exc:
            results["error"] = exc

    with runner:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=30)
    assert "error" not in results, results.get("error")
    assert {device for _, device, _ in state.allocations.values()} <= {1}
    assert calls_named(state.calls, "cudaSetDevice").count(1) >= 3  # activate, infer, release


@pytest.mark.parametrize("native", [True, False])
def test_fake_stream_reaches_tensorrt_as_an_int(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    # get_cuda_native_handle where cuda-bindings has it (12.9.1+), int() on older releases.
    state = install_fake_cuda(monkeypatch, native_handle=native)
    fake = FakeTensorRT("10.15.1.29", cuda=state)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    with TrtRunner(_engine_file(tmp_path)) as runner:
        (created,) = state.streams  # the one stream the runner made, by its native pointer
        runner.infer(_feed(1, 1))
        runner.infer(_feed(1, 1))
    # Every launch got that stream's pointer as a plain int, never the cudaStream_t object.
    (handle,) = set(calls_named(fake.engines[0].calls, "execute_async_v3"))
    assert type(handle) is int and handle == created
    assert calls_named(fake.engines[0].calls, "set_optimization_profile_async") == [0]


def test_fake_tensorrt_with_a_missing_library_shows_the_loader_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real package whose import fails the way the wheel does without its shared library.
    package = tmp_path / "site" / "tensorrt"
    package.mkdir(parents=True)
    message = "libnvinfer.so.10: cannot open shared object file: No such file or directory"
    (package / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        import_tensorrt()
    text = str(info.value)
    assert message in text and "not installed" not in text


def test_fake_undeserialisable_engine_is_a_model_file_error_with_the_log(
    tmp_path: Path, fake_gpu: tuple[FakeTensorRT, FakeCuda], caplog: pytest.LogCaptureFixture
) -> None:
    path = _engine_file(tmp_path)
    data = b"garbage"
    path.write_bytes(data)
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar["engine_sha256"] = sha256_bytes(data)
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(ModelFileError, match=r"cannot deserialise .* magic tag"):
        TrtRunner(path).activate()
    # The runtime's TensorRT logger forwards errors to logging as they arrive.
    assert any("magic tag" in record.getMessage() for record in caplog.records)
