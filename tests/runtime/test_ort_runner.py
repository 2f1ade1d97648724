"""OrtRunner and the BaseRunner contract, on the real 65 x 65 export (``small_export``, K 1..2)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import contract
from dpnet_runtime.backends.base import check_feed, open_runner
from dpnet_runtime.backends.ort import OrtRunner
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.errors import BackendUnavailableError, InputError, ModelFileError

SIZE, FEATURE_SIZE = 65, 9


def _episode_feed(shots: int = 2, batch: int = 1, size: int = SIZE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    masks = np.zeros((batch, shots, size, size), np.float32)
    masks[..., 16:40, 16:40] = 1
    return {
        contract.SUPPORT_IMAGES: rng.standard_normal((batch, shots, 3, size, size), np.float32),
        contract.SUPPORT_MASKS: masks,
        contract.QUERY_IMAGE: rng.standard_normal((batch, 3, size, size), np.float32),
    }


@pytest.fixture
def runner(small_export: Path) -> Iterator[OrtRunner]:
    with OrtRunner(small_export / "dpnet.onnx", intra_op_threads=1) as active:
        yield active


def test_metadata_reports_contract_specs(runner: OrtRunner) -> None:
    inputs = runner.get_input_metadata()
    assert list(inputs) == list(("support_images", "support_masks", "query_image"))
    assert inputs[contract.SUPPORT_IMAGES] == TensorSpec(
        contract.SUPPORT_IMAGES,
        "float32",
        (contract.BATCH_AXIS, contract.SHOTS_AXIS, 3, SIZE, SIZE),
    )
    outputs = runner.get_output_metadata()
    assert outputs[contract.MASK].dtype == "uint8"
    assert outputs[contract.PSEUDO_COUNT].dtype == "int32"
    assert runner.get_properties()[contract.META_GRAPH] == "episode"


@pytest.mark.parametrize(("batch", "shots"), [(1, 1), (3, 2)])
def test_infer_runs_dynamic_batch_and_shots(runner: OrtRunner, batch: int, shots: int) -> None:
    outputs = runner.infer(_episode_feed(shots, batch))
    assert outputs[contract.LOGITS].shape == (batch, 2, SIZE, SIZE)
    assert outputs[contract.MASK].dtype == np.uint8
    assert outputs[contract.CONFIDENCE].shape == (batch, shots, FEATURE_SIZE, FEATURE_SIZE)
    assert runner.last_inference_ns is not None and runner.last_inference_ns > 0


def test_infer_returns_arrays_the_caller_owns(runner: OrtRunner) -> None:
    feed = _episode_feed()
    first = runner.infer(feed)
    expected = first[contract.LOGITS].copy()
    first[contract.LOGITS][...] = 0
    np.testing.assert_array_equal(runner.infer(feed)[contract.LOGITS], expected)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (contract.SUPPORT_IMAGES, np.zeros((1, 2, 3, SIZE, SIZE), np.float64), "wrong dtype"),
        (contract.SUPPORT_IMAGES, np.zeros((2, 3, SIZE, SIZE), np.float32), "wrong rank"),
        (contract.QUERY_IMAGE, np.zeros((1, 3, SIZE - 1, SIZE), np.float32), "axis 2 must be 65"),
        (contract.SUPPORT_MASKS, np.zeros((1, 1, SIZE, SIZE), np.float32), "axis K is 1"),
    ],
)
def test_infer_rejects_bad_feed_naming_the_tensor(
    runner: OrtRunner, name: str, value: np.ndarray, expected: str
) -> None:
    feed = _episode_feed() | {name: value}
    with pytest.raises(InputError, match=expected) as info:
        runner.infer(feed)
    assert repr(name) in str(info.value)


def test_infer_rejects_missing_and_unknown_names(runner: OrtRunner) -> None:
    feed = _episode_feed()
    feed["extra"] = feed.pop(contract.QUERY_IMAGE)
    with pytest.raises(InputError, match=r"missing \['query_image'\], unknown \['extra'\]"):
        runner.infer(feed)


def test_check_feed_enforces_profile_bounds() -> None:
    spec = TensorSpec("x", "float32", ("B", 3), min_shape=(1, 3), max_shape=(4, 3))
    check_feed({"x": np.zeros((4, 3), np.float32)}, {"x": spec})
    with pytest.raises(InputError, match=r"axis 0 must be in \[1, 4\]"):
        check_feed({"x": np.zeros((5, 3), np.float32)}, {"x": spec})


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model\n" * 4, "truncate"])
def test_bad_model_file_is_a_model_file_error(
    tmp_path: Path, small_export: Path, content: bytes | str
) -> None:
    path = tmp_path / "dpnet.onnx"
    if content == "truncate":
        data = (small_export / "dpnet.onnx").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)  # type: ignore[arg-type]
    with pytest.raises(ModelFileError) as info:
        OrtRunner(path).activate()
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_file_is_a_model_file_error(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        open_runner("ort", tmp_path / "absent.onnx")


def test_runner_must_be_active(small_export: Path) -> None:
    runner = OrtRunner(small_export / "dpnet.onnx")
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(_episode_feed())
    with runner:
        assert runner.is_active
    assert not runner.is_active


def test_open_runner_rejects_unknown_backend_and_option(small_export: Path) -> None:
    with pytest.raises(InputError, match="unknown backend 'tflite'; choose one of ort, trt"):
        open_runner("tflite", small_export / "dpnet.onnx")
    with pytest.raises(InputError, match="unexpected keyword"):
        open_runner("ort", small_export / "dpnet.onnx", device=0)
    with pytest.raises(InputError, match="intra_op_threads must be >= 1"):
        open_runner("ort", small_export / "dpnet.onnx", intra_op_threads=0)


def test_absent_execution_provider_names_the_extra(small_export: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"dpnet\[gpu\]"):
        open_runner("ort", small_export / "dpnet.onnx", providers=["NoSuchExecutionProvider"])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT installed")
def test_trt_backend_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    engine = tmp_path / "dpnet.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(BackendUnavailableError, match=r"dpnet\[trt\]"):
        open_runner("trt", engine)


@pytest.mark.parametrize("allow_spinning", [False, True])
def test_thread_spinning_is_off_unless_asked_for(small_export: Path, allow_spinning: bool) -> None:
    runner = OrtRunner(small_export / "dpnet.onnx", allow_spinning=allow_spinning)
    options = runner._session_options()
    expected = "1" if allow_spinning else "0"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
    with runner:  # the session accepts the options
        assert runner.get_input_metadata()
