"""Real TensorRT engines: build, cache reuse, run, parity with ONNX Runtime FP32, p50 latency.

Needs TensorRT, cuda-python and an NVIDIA GPU; skipped with the reason printed otherwise
(`pytest -rs`). The graph is a small stand-in with dpnet.onnx's inputs and logits output,
so these tests check the build/run machinery; model parity on DPNet itself is dpnet-bench's.
The INT8 test builds the TensorRT-flavoured QDQ graph of the trained tiny model
(``dpnet_int8_trt.onnx``) and compares its masks with ONNX Runtime FP32's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dpnet_runtime import contract

pytestmark = [pytest.mark.trt, pytest.mark.gpu, pytest.mark.slow]

SIZE = 16
INT8_EPISODES = 20


def _require_tensorrt_and_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'dpnet[trt]')")
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip(f"no CUDA GPU ({err})")


def _episode_onnx(path: Path) -> Path:
    """logits = [-s, s], s = <query, mean over K and pixels of the masked support images>."""
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(contract.SUPPORT_IMAGES, f32, ["B", "K", 3, SIZE, SIZE]),
        helper.make_tensor_value_info(contract.SUPPORT_MASKS, f32, ["B", "K", SIZE, SIZE]),
        helper.make_tensor_value_info(contract.QUERY_IMAGE, f32, ["B", 3, SIZE, SIZE]),
    ]
    axes = {
        "ax2": [2],
        "ax134": [1, 3, 4],
        "ax23": [2, 3],
        "ax1": [1],
    }
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in axes.items()]
    nodes = [
        helper.make_node("Unsqueeze", [contract.SUPPORT_MASKS, "ax2"], ["m"]),
        helper.make_node("Mul", [contract.SUPPORT_IMAGES, "m"], ["masked"]),
        helper.make_node("ReduceMean", ["masked", "ax134"], ["proto"], keepdims=0),
        helper.make_node("Unsqueeze", ["proto", "ax23"], ["p"]),
        helper.make_node("Mul", [contract.QUERY_IMAGE, "p"], ["qp"]),
        helper.make_node("ReduceSum", ["qp", "ax1"], ["s"], keepdims=1),
        helper.make_node("Neg", ["s"], ["ns"]),
        helper.make_node("Concat", ["ns", "s"], [contract.LOGITS], axis=1),
    ]
    outputs = [helper.make_tensor_value_info(contract.LOGITS, f32, ["B", 2, SIZE, SIZE])]
    graph = helper.make_graph(nodes, "episode", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {contract.META_PRECISION: "fp32"})  # as the exporter records it
    onnx.save(model, path)
    return path


def _feed(rng: np.random.Generator, batch: int, shots: int) -> dict[str, np.ndarray]:
    return {
        contract.SUPPORT_IMAGES: rng.standard_normal((batch, shots, 3, SIZE, SIZE), np.float32),
        contract.SUPPORT_MASKS: (rng.random((batch, shots, SIZE, SIZE)) > 0.5).astype(np.float32),
        contract.QUERY_IMAGE: rng.standard_normal((batch, 3, SIZE, SIZE), np.float32),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    _require_tensorrt_and_gpu()
    from dpnet_export.onnx_to_engine import EngineBuildOptions, ShapeRange, onnx_to_engine

    folder = tmp_path_factory.mktemp("engine")
    onnx_path = _episode_onnx(folder / "dpnet.onnx")
    options = EngineBuildOptions(
        folder,
        shots=ShapeRange(1, 1, 5),
        batch=ShapeRange(1, 1, 2),
        timing_cache=folder / "timing.cache",
    )
    result = onnx_to_engine(options)
    assert not result.reused and result.engine_path.is_file()
    assert (folder / "timing.cache").stat().st_size > 0
    assert onnx_to_engine(options).reused  # same inputs, same GPU: the engine cache serves it
    return onnx_path, result.engine_path


def test_parity_with_onnxruntime_and_latency(built: tuple[Path, Path]) -> None:
    from dpnet_runtime.backends.base import open_runner

    onnx_path, engine_path = built
    rng = np.random.default_rng(0)
    with open_runner("ort", onnx_path) as ort_runner, open_runner("trt", engine_path) as trt_runner:
        for batch, shots in [(1, 1), (2, 3), (1, 5)]:
            feed = _feed(rng, batch, shots)
            expected = ort_runner.infer(feed)[contract.LOGITS]
            got = trt_runner.infer(feed)[contract.LOGITS]
            assert got.shape == expected.shape
            assert np.abs(got - expected).max() <= 1e-3
            agreement = (got.argmax(1) == expected.argmax(1)).mean()
            assert agreement >= 0.999
        feed = _feed(rng, 1, 1)
        times = []
        for _ in range(50):
            trt_runner.infer(feed)
            times.append(trt_runner.last_inference_ns or 0)
        print(f"TensorRT p50 latency: {np.percentile(times, 50) / 1e6:.3f} ms")


def test_shots_outside_profile_and_bad_engines(built: tuple[Path, Path], tmp_path: Path) -> None:
    from dpnet_runtime.backends.base import open_runner
    from dpnet_runtime.backends.trt_sidecar import sidecar_path
    from dpnet_runtime.errors import IncompatibleModelError, InputError, ModelFileError

    _, engine_path = built
    runner = open_runner("trt", engine_path)
    with runner, pytest.raises(InputError, match=r"axis 1 must be in \[1, 5\]"):
        runner.infer(_feed(np.random.default_rng(1), 1, 6))
    truncated = tmp_path / "dpnet.engine"
    truncated.write_bytes(engine_path.read_bytes()[:1000])
    sidecar_path(truncated).write_text(sidecar_path(engine_path).read_text())
    with pytest.raises(ModelFileError, match="truncated"):
        open_runner("trt", truncated)
    other = json.loads(sidecar_path(engine_path).read_text())
    other["tensorrt_version"] = "9.0.0"
    truncated.write_bytes(engine_path.read_bytes())
    sidecar_path(truncated).write_text(json.dumps(other))
    with pytest.raises(IncompatibleModelError, match=r"9\.0\.0"):
        open_runner("trt", truncated)


def test_int8_engine_builds_and_agrees_with_onnxruntime(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _require_tensorrt_and_gpu()  # before the slow fixtures: skip costs nothing
    from dpnet.data import build_dataset
    from dpnet_export.calibration import episode_feed
    from dpnet_export.onnx_to_engine import EngineBuildOptions, ShapeRange, onnx_to_engine
    from dpnet_runtime import Predictor
    from dpnet_runtime.contract import LOGITS

    export_dir: Path = request.getfixturevalue("tiny_segmenting_export_dir")
    for name in ("dpnet.onnx", "dpnet_int8_trt.onnx"):
        shutil.copy(export_dir / name, tmp_path)
    options = EngineBuildOptions(
        tmp_path,
        precision="int8",
        shots=ShapeRange(1, 1, 1),
        batch=ShapeRange(1, 1, 1),
    )
    result = onnx_to_engine(options)
    assert result.engine_path == tmp_path / "dpnet_int8.engine"
    assert (result.sidecar.precision, result.sidecar.onnx_file) == ("int8", "dpnet_int8_trt.onnx")
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=1, seed=0, episodes=INT8_EPISODES
    )
    agree = total = 0
    with (
        Predictor.open(tmp_path, "trt", precision="int8") as engine,
        Predictor.open(tmp_path, "ort") as reference,
    ):
        for index in range(INT8_EPISODES):
            feed = episode_feed(dataset[index], 129, raw_input=False)
            ours = engine.infer_episode(feed)[LOGITS].argmax(1)
            theirs = reference.infer_episode(feed)[LOGITS].argmax(1)
            agree += int(np.count_nonzero(ours == theirs))
            total += ours.size
    assert agree / total >= 0.97
