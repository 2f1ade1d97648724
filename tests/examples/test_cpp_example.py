"""examples/cpp built with CMake and run against the Python runtime on a tiny --raw-input export.

No registry package here ships ONNX Runtime's C/C++ headers (the onnxruntime wheel ships
``libonnxruntime.so.1.x`` but no headers; Debian 12 has no onnxruntime package), so the test
needs ``ONNXRUNTIME_ROOT`` pointing at an ONNX Runtime release folder (or any folder with
``include/onnxruntime_cxx_api.h``); without it, it is skipped with that reason. The library
comes from ``ONNXRUNTIME_ROOT/lib`` or else from the installed onnxruntime wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from dpnet_runtime import Predictor
from dpnet_runtime.preprocess import load_image, load_mask, prepare_query, prepare_support

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cpp"
SIZE = 65


def _ort_root() -> Path:
    root = os.environ.get("ONNXRUNTIME_ROOT")
    if not root:
        pytest.skip(
            "ONNXRUNTIME_ROOT is not set: no registry package here ships ONNX Runtime's C/C++ "
            "headers; set it to an ONNX Runtime release folder to build examples/cpp"
        )
    if not any(Path(root).glob("include/**/onnxruntime_cxx_api.h")):
        pytest.skip(f"ONNXRUNTIME_ROOT={root} has no include/**/onnxruntime_cxx_api.h")
    return Path(root)


def _wheel_library() -> Path:
    capi = Path(onnxruntime.__file__).parent / "capi"
    libraries = sorted(capi.glob("libonnxruntime.so.*"))
    if not libraries:
        pytest.skip(f"the onnxruntime wheel in {capi} ships no libonnxruntime.so.*")
    return libraries[0]


@pytest.fixture(scope="module")
def cpp_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("cmake") and shutil.which("c++")):
        pytest.skip("cmake or a C++ compiler is missing (apt-get install cmake g++)")
    root = _ort_root()
    build = tmp_path_factory.mktemp("cpp_build")
    configure = ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DONNXRUNTIME_ROOT={root}"]  # fmt: skip
    if not any(root.glob("lib*/libonnxruntime.so*")):
        configure.append(f"-DONNXRUNTIME_LIBRARY={_wheel_library()}")
    for command in (configure, ["cmake", "--build", str(build)]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return build / "dpnet_segment"


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DPNet whose classifier bias splits a query about in half, raw-input export."""
    torch = pytest.importorskip("torch")
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.model.dpnet import build_dpnet
    from dpnet_export.torch_to_onnx import ExportOptions, export_onnx

    torch.manual_seed(0)
    model = build_dpnet(preset("tiny", input_size=SIZE), pretrained_backbone=False).eval()
    (support, mask), (query, _) = _scene(60, 70, 0), _scene(90, 61, 1)
    images, masks = prepare_support([support], [mask], SIZE, raw_input=False, max_shots=None)
    query_input = prepare_query(query, SIZE, raw_input=False)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(x) for x in (images, masks, query_input)))
        # A random decoder says "object" everywhere; centre the logit gap on its median.
        bias = model.decoder.classifier.bias
        assert bias is not None
        bias[1] -= (logits[0, 1] - logits[0, 0]).median()
    folder = tmp_path_factory.mktemp("cpp_model")
    meta = make_meta(dataset="synthetic", fold=0, shots=1, epoch=0)
    save_checkpoint(folder / "tiny.pt", model, meta)
    export_onnx(folder / "tiny.pt", folder / "split", ExportOptions(raw_input=True, max_shots=2))
    (folder / "episode").mkdir()
    shutil.copy(folder / "split" / "dpnet.onnx", folder / "episode")
    return folder


def _scene(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random colours with a brighter disc: ``uint8 [H, W, 3]`` and its 0/1 mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (height / 4) ** 2).astype(np.uint8)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR))
    return np.where(mask[..., None] == 1, 255 - image // 2, image).astype(np.uint8), mask


def _write_inputs(folder: Path, shots: int) -> tuple[list[tuple[Path, Path]], Path]:
    pairs = []
    for shot in range(shots):
        image, mask = _scene(60 + 7 * shot, 70, 10 + shot)
        pairs.append((folder / f"support{shot}.ppm", folder / f"support{shot}.pgm"))
        Image.fromarray(image).save(pairs[-1][0])
        Image.fromarray(mask * 255).save(pairs[-1][1])
    query = folder / "query.ppm"
    Image.fromarray(_scene(90, 61, 1)[0]).save(query)
    return pairs, query


@pytest.mark.parametrize(("graphs", "shots"), [("split", 1), ("split", 2), ("episode", 2)])
def test_cpp_mask_matches_the_python_runtime(
    cpp_binary: Path, raw_export: Path, tmp_path: Path, graphs: str, shots: int
) -> None:
    pairs, query = _write_inputs(tmp_path, shots)
    out = tmp_path / "mask.pgm"
    command = [str(cpp_binary), "--model", str(raw_export / graphs), "--query", str(query),
               "--out", str(out), "--threads", "1"]  # fmt: skip
    for image, mask in pairs:
        command += ["--support", f"{image}:{mask}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cpp_mask = np.asarray(Image.open(out)) // 255

    with Predictor.open(raw_export / graphs, intra_op_threads=1) as predictor:
        support = predictor.encode_support(
            [load_image(image) for image, _ in pairs], [load_mask(mask) for _, mask in pairs]
        )
        result = predictor.segment(load_image(query), support)
    assert 0.1 < result.mask.mean() < 0.9, "the model must not segment everything or nothing"
    assert cpp_mask.shape == result.mask.shape
    # Pixels may differ only where the classes (nearly) tie: float32 rounding, and resized
    # support pixels that differ by one grey level where Pillow orders its passes otherwise.
    differ = cpp_mask != result.mask
    assert differ.mean() <= 0.001
    assert np.abs(result.probability[differ] - 0.5).max(initial=0.0) <= 1e-4


def test_cpp_rejects_a_mask_of_another_size(
    cpp_binary: Path, raw_export: Path, tmp_path: Path
) -> None:
    pairs, query = _write_inputs(tmp_path, 1)
    command = [str(cpp_binary), "--model", str(raw_export / "split"), "--query", str(query),
               "--support", f"{pairs[0][0]}:{query}", "--out", str(tmp_path / "m.pgm")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "its image's size" in done.stderr
