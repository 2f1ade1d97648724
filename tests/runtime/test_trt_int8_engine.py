"""A real TensorRT INT8 engine from the INT8 export: build, run, agree with ONNX Runtime.

Needs TensorRT, cuda-python and an NVIDIA GPU; skipped with the reason printed otherwise
(`pytest -rs`). The engine is built from the TensorRT-flavoured QDQ graph of the trained tiny
model (`dpnet_int8_trt.onnx`, explicit quantization, strongly typed), and its masks are
compared with ONNX Runtime's FP32 ones on synthetic episodes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.trt, pytest.mark.gpu, pytest.mark.slow]

EPISODES = 20


def _require_tensorrt_and_gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'dpnet[trt]')")
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip(f"no CUDA GPU ({err})")


def test_int8_engine_builds_and_agrees_with_onnxruntime(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    _require_tensorrt_and_gpu()  # before the slow fixtures: skip costs nothing
    from dpnet.data import build_dataset
    from dpnet_export.calibration import episode_feed
    from dpnet_export.onnx_to_engine import EngineBuildOptions, ShapeRange, onnx_to_engine
    from dpnet_runtime import Predictor
    from dpnet_runtime.contract import LOGITS

    export_dir: Path = request.getfixturevalue("tiny_int8_export_dir")
    for name in ("dpnet.onnx", "dpnet_int8_trt.onnx"):
        shutil.copy(export_dir / name, tmp_path)
    options = EngineBuildOptions(
        tmp_path / "dpnet.onnx",
        precision="int8",
        shots=ShapeRange(1, 1, 1),
        batch=ShapeRange(1, 1, 1),
    )
    result = onnx_to_engine(options)
    assert result.engine_path == tmp_path / "dpnet_int8.engine"
    assert (result.sidecar.precision, result.sidecar.onnx_file) == ("int8", "dpnet_int8_trt.onnx")
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=1, seed=0, episodes=EPISODES
    )
    agree = total = 0
    with (
        Predictor.open(tmp_path, "trt", precision="int8") as engine,
        Predictor.open(tmp_path, "ort") as reference,
    ):
        for index in range(EPISODES):
            feed = episode_feed(dataset[index], 129, raw_input=False)
            ours = engine.infer_episode(feed)[LOGITS].argmax(1)
            theirs = reference.infer_episode(feed)[LOGITS].argmax(1)
            agree += int(np.count_nonzero(ours == theirs))
            total += ours.size
    assert agree / total >= 0.97
