"""An engine says what it is: the precision recorded at build time is the one the runtime finds,
and a file that holds another precision than the one asked for is refused in one line.

The engines are built by ``onnx_to_engine`` against a FAKE ``tensorrt`` and FAKE cuda-python
(tests/fake_trt.py), from the fake contract graphs of ``make_fake_export_dir`` (real ONNX files
with the exporter's metadata): the build, the sidecar and the runtime's checks are dpnet's own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_trt import FakeTensorRT, install_fake_cuda, write_import_shims
from PIL import Image

from dpnet_export.onnx_to_engine import EngineBuildOptions, onnx_to_engine
from dpnet_runtime import Predictor, contract
from dpnet_runtime.backends.base import open_runner
from dpnet_runtime.backends.trt_sidecar import read_sidecar
from dpnet_runtime.errors import IncompatibleModelError

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    fake = FakeTensorRT("10.15.1.29", cuda=install_fake_cuda(monkeypatch))
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    return fake


def _export_with_sources(make_fake_export_dir: Callable[..., Path], tmp_path: Path) -> Path:
    """A fake export with the source graph of every trt row, each recording its precision."""
    folder = tmp_path / "export"
    shutil.copytree(make_fake_export_dir(), folder)
    graph = onnx.load(folder / "dpnet.onnx")
    props = {prop.key: prop.value for prop in graph.metadata_props}
    for precision in ("fp16", "int8"):
        onnx.helper.set_model_props(graph, {**props, contract.META_PRECISION: precision})
        onnx.save(graph, folder / contract.find_format("trt", precision).onnx_name("episode"))
    return folder


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:40] = 1
    return image, mask, rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)


@pytest.mark.usefixtures("fake_gpu")
def test_fake_engine_precision_round_trip_and_the_most_faithful_one_present(
    make_fake_export_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = _export_with_sources(make_fake_export_dir, tmp_path)
    # Only FP16 built: without a precision, the trt backend opens it (and says so).
    fp16 = onnx_to_engine(EngineBuildOptions(folder, precision="fp16"))
    assert fp16.engine_path.name == "dpnet_fp16.engine"
    assert read_sidecar(fp16.sidecar_path).precision == "fp16"
    image, mask, query = _scene()
    with Predictor.open(folder, "trt") as predictor:
        assert (predictor.format, predictor.precision) == (contract.FORMATS["trt-fp16"], "fp16")
        result = predictor.segment(query, predictor.encode_support([image], [mask]))
        assert result.mask.shape == query.shape[:2]
    for precision in ("fp32", "int8"):
        onnx_to_engine(EngineBuildOptions(folder, precision=precision))
    for precision in PRECISIONS:
        with Predictor.open(folder, "trt", precision=precision) as predictor:
            assert predictor.precision == precision  # read from the engine's sidecar
            assert [path.name for path in predictor.files] == [
                contract.find_format("trt", precision).file_name("episode")
            ]
    with Predictor.open(folder, "trt") as predictor:  # all three present: FP32 first
        assert predictor.format == contract.FORMATS["trt"]


@pytest.mark.usefixtures("fake_gpu")
def test_fake_fp32_engine_opened_as_the_fp16_row_is_refused(
    make_fake_export_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = _export_with_sources(make_fake_export_dir, tmp_path)
    built = onnx_to_engine(EngineBuildOptions(folder, precision="fp32"))
    # An FP32 engine (and its sidecar) renamed as the FP16 one.
    built.engine_path.rename(folder / "dpnet_fp16.engine")
    built.sidecar_path.rename(folder / "dpnet_fp16.engine.json")
    with pytest.raises(IncompatibleModelError) as info:
        Predictor.open(folder, "trt", precision="fp16")
    message = str(info.value)
    assert "dpnet_fp16.engine holds fp32, not the fp16 asked for (trt-fp16)" in message
    assert "\n" not in message
    # Without a precision the name is the claim: still refused, naming both precisions.
    with pytest.raises(IncompatibleModelError, match=r"holds fp32 but its name is the trt-fp16"):
        Predictor.open(folder, "trt")


def test_fake_onnx_copy_of_another_precision_is_refused(
    make_fake_export_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = tmp_path / "export"
    shutil.copytree(make_fake_export_dir(), folder)
    for role in contract.GRAPHS:  # FP32 graphs copied under the FP16 names
        fp32, fp16 = (contract.find_format("ort", p).file_name(role) for p in ("fp32", "fp16"))
        shutil.copy(folder / fp32, folder / fp16)
    with pytest.raises(IncompatibleModelError, match=r"holds fp32, not the fp16 asked for"):
        Predictor.open(folder, precision="fp16")
    # A graph with no precision at all says how to fix it.
    graph = onnx.load(folder / "dpnet.onnx")
    kept = [p for p in graph.metadata_props if p.key != contract.META_PRECISION]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    onnx.save(graph, tmp_path / "bare.onnx")
    with pytest.raises(IncompatibleModelError, match=r"records no precision .* re-export"):
        Predictor.open(tmp_path / "bare.onnx")
    # A single file under a name of no row: its own metadata says which row it is.
    shutil.copy(make_fake_export_dir(fp16=True) / "dpnet_fp16.onnx", tmp_path / "mine.onnx")
    with Predictor.open(tmp_path / "mine.onnx") as predictor:
        assert (predictor.format, predictor.precision) == (contract.FORMATS["ort-fp16"], "fp16")


@pytest.mark.usefixtures("fake_gpu")
def test_fake_segment_cli_on_trt_with_default_options_and_threads(
    make_fake_export_dir: Callable[..., Path], tmp_path: Path
) -> None:
    folder = _export_with_sources(make_fake_export_dir, tmp_path)
    onnx_to_engine(EngineBuildOptions(folder, precision="fp16"))
    image, mask, query = _scene()
    paths = {name: tmp_path / f"{name}.png" for name in ("image", "mask", "query")}
    for path, pixels in zip(paths.values(), (image, mask * 255, query), strict=True):
        Image.fromarray(pixels).save(path)
    tests = Path(__file__).resolve().parents[1]
    shims = write_import_shims(tmp_path / "shims")  # the same fakes, in the CLI's process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shims), str(tests)])}
    out = tmp_path / "predicted.png"
    args = [sys.executable, "-m", "dpnet_runtime", "--model", str(folder), "--backend", "trt",
            "--support", f"{paths['image']}:{paths['mask']}", "--query", str(paths["query"]),
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.rstrip().endswith("; model trt-fp16 (fp16))"), done.stderr
    with Predictor.open(folder, "trt") as predictor:  # the same fake engine, in this process
        expected = predictor.segment(query, predictor.encode_support([image], [mask])).mask
    np.testing.assert_array_equal(np.asarray(Image.open(out)) // 255, expected)
    threads = subprocess.run([*args, "--threads", "2"], capture_output=True, text=True, env=env,
                             timeout=120)  # fmt: skip
    assert threads.returncode == 1 and threads.stderr.count("\n") == 1, threads.stderr
    assert threads.stderr.startswith(
        "error: the trt backend computes on the GPU and has no CPU threads to set: drop "
        "--threads (it sets the threads of the ort backend)"
    )


@pytest.mark.usefixtures("fake_gpu")
def test_fake_engine_of_the_real_export_reports_the_axis_names_onnx_runtime_does(
    small_export: Path, tmp_path: Path
) -> None:
    # The exported graphs name their dynamic axes as the contract does (B, K): ONNX Runtime
    # reads them from the graph, TensorRT's specs name them from the contract; they agree.
    folder = tmp_path / "export"
    shutil.copytree(small_export, folder)
    engine = onnx_to_engine(EngineBuildOptions(folder)).engine_path
    with open_runner("ort", folder / "dpnet.onnx") as ort, open_runner("trt", engine) as trt:
        ort_shapes = {name: spec.shape for name, spec in ort.get_input_metadata().items()}
        trt_shapes = {name: spec.shape for name, spec in trt.get_input_metadata().items()}
        assert ort_shapes == trt_shapes, (ort_shapes, trt_shapes)
        assert ort_shapes[contract.SUPPORT_MASKS][:2] == (contract.BATCH_AXIS, contract.SHOTS_AXIS)
        ort_out = {name: spec.shape for name, spec in ort.get_output_metadata().items()}
        trt_out = {name: spec.shape for name, spec in trt.get_output_metadata().items()}
        assert ort_out == trt_out, (ort_out, trt_out)
