"""GPU acceptance of the TensorRT fixes (run by benchmarks/gpu/acceptance.sh).

Real TensorRT, cuda-python and an NVIDIA GPU; skipped here with the reason printed. Each test
prints ``RESULT ...`` lines that the script copies into benchmarks/results/gpu_acceptance.md:

- a build with a corrupt and a foreign timing cache still writes the engine;
- FP32 (TF32 off) vs TF32 ArgMax agreement with float64 on a 1024-d similarity;
- strongly vs weakly typed FP16 on TensorRT 10 (C' agreement, mIoU, inf/NaN);
- ``infer_device`` refuses a misaligned and a non-contiguous buffer;
- a runner on device 1 called from a worker thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytestmark = [pytest.mark.trt, pytest.mark.gpu, pytest.mark.slow]

SIM_ROWS = 1681  # 41 x 41 positions, as the CCM at 321 x 321
SIM_DIM = 1024


@pytest.fixture(scope="session")  # session: set up (and skip) before the export fixture
def device_count() -> int:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'dpnet[trt]')")
    runtime = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = runtime.cudaGetDeviceCount()
    if err != runtime.cudaError_t.cudaSuccess or count == 0:
        pytest.skip(f"no CUDA GPU ({err})")
    return int(count)


def _similarity_onnx(path: Path) -> Path:
    """query [B, N, D] x support [B, D, N] -> ArgMax over the support axis (the CCM's j*)."""
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("query_image", f32, ["B", SIM_ROWS, SIM_DIM]),
        helper.make_tensor_value_info("support_masks", f32, ["B", SIM_DIM, SIM_ROWS]),
    ]
    nodes = [
        helper.make_node("MatMul", ["query_image", "support_masks"], ["sim"]),
        helper.make_node("ArgMax", ["sim"], ["arg"], axis=2, keepdims=0),
        helper.make_node("Cast", ["arg"], ["mask"], to=TensorProto.INT32),
    ]
    outputs = [helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", SIM_ROWS])]
    model = helper.make_model(
        helper.make_graph(nodes, "similarity", inputs, outputs),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 9
    helper.set_model_props(model, {"precision": "fp32"})  # as the exporter records it
    onnx.save(model, path)
    return path


def _build(onnx_path: Path, engine: str, **options: object) -> Path:
    """Build the row of ``precision`` from the export folder of ``onnx_path``."""
    from dpnet_export.onnx_to_engine import EngineBuildOptions, ShapeRange, onnx_to_engine

    build = EngineBuildOptions(
        onnx_path.parent,
        out_path=onnx_path.with_name(engine),
        batch=ShapeRange(1, 1, 1),
        **options,  # type: ignore[arg-type]
    )
    return onnx_to_engine(build).engine_path


def test_corrupt_and_foreign_timing_caches_still_build(device_count: int, tmp_path: Path) -> None:
    onnx_path = _similarity_onnx(tmp_path / "dpnet.onnx")
    cache = tmp_path / "timing.cache"
    _build(onnx_path, "first.engine", timing_cache=cache)
    valid = cache.read_bytes()
    variants = {
        "corrupt": b"\x00garbage" * 64,
        "foreign": bytes(b ^ 0xFF for b in valid[:32]) + valid[32:],  # another header
    }
    for name, data in variants.items():
        cache.write_bytes(data)
        engine = _build(onnx_path, f"{name}.engine", timing_cache=cache, rebuild=True)
        assert engine.is_file() and cache.read_bytes() != data
        print(
            f"RESULT timing cache {name}: engine built, cache replaced ({cache.stat().st_size} B)"
        )


def test_tf32_off_keeps_the_similarity_argmax(device_count: int, tmp_path: Path) -> None:
    from dpnet_runtime.backends.trt import TrtRunner

    onnx_path = _similarity_onnx(tmp_path / "dpnet.onnx")
    rng = np.random.default_rng(0)
    # L2-normalised features with near-ties, as the CCM's cosine similarity has them.
    query = rng.standard_normal((1, SIM_ROWS, SIM_DIM)).astype(np.float32)
    query /= np.linalg.norm(query, axis=2, keepdims=True)
    support = np.repeat(query[:, :64], SIM_ROWS // 64 + 1, axis=1)[:, :SIM_ROWS]
    support = support + 1e-4 * rng.standard_normal(support.shape).astype(np.float32)
    support = np.ascontiguousarray(support.transpose(0, 2, 1))
    truth = (query.astype(np.float64) @ support.astype(np.float64)).argmax(axis=2)
    agreement = {}
    for tf32 in (False, True):
        engine = _build(onnx_path, f"tf32_{tf32}.engine", tf32=tf32)
        with TrtRunner(engine) as runner:
            got = runner.infer({"query_image": query, "support_masks": support})["mask"]
        agreement[tf32] = float((got == truth).mean())
        print(f"RESULT ArgMax agreement with float64, TF32 {'on' if tf32 else 'off'}: "
              f"{agreement[tf32]:.4f}")  # fmt: skip
    assert agreement[False] >= 0.999 and agreement[False] >= agreement[True]


def test_fp16_strongly_vs_weakly_typed_on_tensorrt_10(
    device_count: int, tiny_trained_export_dir: Path, tmp_path: Path
) -> None:
    import shutil

    import tensorrt

    from dpnet.data import build_dataset
    from dpnet_runtime.backends.base import open_runner
    from dpnet_runtime.preprocess import normalize_images

    if not tensorrt.__version__.startswith("10."):
        pytest.skip(f"weak typing exists only in TensorRT 10 (here {tensorrt.__version__})")
    folder = tmp_path / "export"
    shutil.copytree(tiny_trained_export_dir, folder)
    engines = {
        "strong": _build(folder / "dpnet.onnx", "strong.engine", precision="fp16"),
        "weak": _build(folder / "dpnet.onnx", "weak.engine", precision="fp16", weak_typing=True),
    }
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=1, seed=0, episodes=20, image_size=129
    )
    runners = {name: open_runner("trt", path) for name, path in engines.items()}
    reference = open_runner("ort", folder / "dpnet.onnx")
    agree = {name: [] for name in runners}
    inter = {name: 0 for name in runners}
    union = {name: 0 for name in runners}
    finite = {name: True for name in runners}
    try:
        for index in range(len(dataset)):
            episode = dataset[index]
            feed = {
                "support_images": normalize_images(np.stack(episode.support_images)[None]),
                "support_masks": (np.stack(episode.support_masks)[None] == 1).astype(np.float32),
                "query_image": normalize_images(episode.query_image[None]),
            }
            expected = reference.infer(feed)
            label = episode.query_mask == 1
            for name, runner in runners.items():
                out = runner.infer(feed)
                agree[name].append(float((out["confidence"] == expected["confidence"]).mean()))
                finite[name] &= bool(np.isfinite(out["logits"]).all())
                inter[name] += int((out["mask"][0].astype(bool) & label).sum())
                union[name] += int((out["mask"][0].astype(bool) | label).sum())
    finally:
        for runner in (*runners.values(), reference):
            runner.deactivate()
    for name in runners:
        iou = inter[name] / max(union[name], 1)
        print(f"RESULT FP16 {name}ly typed: C' agreement {np.mean(agree[name]):.4f}, "
              f"foreground IoU {iou:.4f}, finite {finite[name]}")  # fmt: skip
    assert finite["strong"] and np.mean(agree["strong"]) >= 0.98


def test_infer_device_refuses_misaligned_and_strided_buffers(
    device_count: int, tmp_path: Path
) -> None:
    from dpnet_runtime.backends import cuda
    from dpnet_runtime.backends.trt import DeviceTensor, TrtRunner
    from dpnet_runtime.errors import InputError

    engine = _build(_similarity_onnx(tmp_path / "dpnet.onnx"), "dpnet.engine")
    rng = np.random.default_rng(1)
    query = rng.standard_normal((1, SIM_ROWS, SIM_DIM)).astype(np.float32)
    support = rng.standard_normal((1, SIM_DIM, SIM_ROWS)).astype(np.float32)
    with TrtRunner(engine) as runner:
        stream = cuda.CudaStream()
        buffers = [cuda.DeviceBuffer(), cuda.DeviceBuffer()]
        tensors = {}
        for buffer, (name, array) in zip(
            buffers, {"query_image": query, "support_masks": support}.items(), strict=True
        ):
            ptr = buffer.ensure(array.nbytes + 256)
            cuda.copy_host_to_device(ptr, array, stream)
            tensors[name] = DeviceTensor(ptr, array.shape, "float32")
        stream.synchronize()
        expected = runner.infer({"query_image": query, "support_masks": support})["mask"]
        out = runner.infer_device(tensors)["mask"]
        host = np.empty(out.shape, np.int32)
        cuda.copy_device_to_host(host, out.ptr, stream)
        stream.synchronize()
        np.testing.assert_array_equal(host, expected)
        shifted = DeviceTensor(tensors["query_image"].ptr + 4, query.shape, "float32")
        with pytest.raises(InputError, match="256-byte aligned"):
            runner.infer_device({**tensors, "query_image": shifted})
        transposed = DeviceTensor(
            tensors["support_masks"].ptr, support.shape, "float32", strides=(0, 1, SIM_DIM)
        )
        with pytest.raises(InputError, match="C-contiguous"):
            runner.infer_device({**tensors, "support_masks": transposed})
        for buffer in buffers:
            buffer.free()
        stream.close()
    print("RESULT infer_device: misaligned and strided buffers refused, contiguous one agrees")


def test_runner_on_device_1_from_a_worker_thread(device_count: int, tmp_path: Path) -> None:
    from dpnet_runtime.backends.trt import TrtRunner

    if device_count < 2:
        pytest.skip(f"needs two GPUs, this machine has {device_count}")
    onnx_path = _similarity_onnx(tmp_path / "dpnet.onnx")
    engine = _build(onnx_path, "dpnet.engine", device=1)
    rng = np.random.default_rng(2)
    feed = {
        "query_image": rng.standard_normal((1, SIM_ROWS, SIM_DIM)).astype(np.float32),
        "support_masks": rng.standard_normal((1, SIM_DIM, SIM_ROWS)).astype(np.float32),
    }
    results: dict[str, object] = {}
    with TrtRunner(engine, device=1) as runner:
        expected = runner.infer(feed)["mask"]

        def work() -> None:
            try:
                results["mask"] = runner.infer(feed)["mask"]
            except BaseException as exc:
                results["error"] = exc

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(timeout=120)
    assert "error" not in results, results.get("error")
    np.testing.assert_array_equal(results["mask"], expected)
    print("RESULT device 1 from a worker thread: same result as the activating thread")
