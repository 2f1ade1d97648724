"""Every file dpnet reads is checked before use: a one-line typed error that names the file.

Through public APIs: checkpoints (``load_checkpoint``, ``export_onnx``), ONNX graphs
(``Predictor.open``, ``lint_onnx``), TensorRT engine sidecars and bytes (``read_sidecar``,
``check_engine_bytes``; no GPU needed), images and masks (``load_image``, ``load_mask``),
split list files (``read_hsnet_list``). Each bad file is missing, empty, truncated, binary
garbage, text, or well-formed but of the wrong kind.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from dpnet_runtime import Predictor
from dpnet_runtime.errors import DatasetError, DpnetError, InputError, ModelFileError
from dpnet_runtime.preprocess import load_image, load_mask

GARBAGE = bytes(range(256)) * 8  # not UTF-8, not a zip, not protobuf that parses to a model


def assert_names_the_file(call: Callable[[], object], path: Path, error: type[DpnetError]) -> None:
    """``call`` raises ``error`` on one line, and the message names ``path``."""
    with pytest.raises(DpnetError) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, error), f"{type(caught.value).__name__}: {message}"
    assert "\n" not in message.strip(), message
    assert str(path) in message or path.name in message, message


def _bad_variants(folder: Path, good: Path) -> dict[str, Path]:
    """The same file name spoilt in every usual way, one folder per variant."""
    data = good.read_bytes()
    variants = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "garbage": GARBAGE,
        "text": b"this is not a model\n",
    }
    paths = {}
    for name, content in variants.items():
        (folder / name).mkdir()
        paths[name] = folder / name / good.name
        paths[name].write_bytes(content)
    paths["missing"] = folder / "missing" / good.name
    return paths


# --- checkpoints ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_checkpoints(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    paths = _bad_variants(folder, small_checkpoint)
    payload = torch.load(small_checkpoint, weights_only=True)
    spoilt = {
        "plain state dict": payload["state_dict"],
        "other version": {**payload, "version": 99},
        "no meta": {key: value for key, value in payload.items() if key != "meta"},
        "bad config": {**payload, "config": {"input_size": 3}},
        "pickled object": {**payload, "meta": zipfile.ZipInfo("x")},  # weights_only refuses
        "wrong weights": {**payload, "state_dict": {"weight": torch.zeros(2)}},
    }
    for name, value in spoilt.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.pt"
        torch.save(value, paths[name])
    with zipfile.ZipFile(folder / "zip.pt", "w") as archive:
        archive.writestr("hello.txt", "a zip, not a torch file")
    paths["other zip"] = folder / "zip.pt"
    return paths


CHECKPOINT_CASES = [
    "missing", "empty", "truncated", "garbage", "text", "plain state dict", "other version",
    "no meta", "bad config", "pickled object", "wrong weights", "other zip",
]  # fmt: skip


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(case: str, bad_checkpoints: dict[str, Path]) -> None:
    from dpnet.checkpoint import load_model

    path = bad_checkpoints[case]
    assert_names_the_file(lambda: load_model(path), path, ModelFileError)


def test_export_of_a_bad_checkpoint_names_it(
    bad_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    from dpnet_export.torch_to_onnx import export_onnx

    path = bad_checkpoints["truncated"]
    assert_names_the_file(lambda: export_onnx(path, tmp_path / "out"), path, ModelFileError)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- ONNX graphs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_graphs(small_export: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_graphs")
    paths = _bad_variants(folder, small_export / "dpnet.onnx")
    identity = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "not_dpnet",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    (folder / "foreign").mkdir()
    paths["foreign"] = folder / "foreign" / "dpnet.onnx"
    onnx.save(identity, paths["foreign"])
    (folder / "empty_dir").mkdir()
    paths["empty dir"] = folder / "empty_dir"
    return paths


@pytest.mark.parametrize(
    "case", ["missing", "empty", "truncated", "garbage", "text", "foreign", "empty dir"]
)
@pytest.mark.parametrize("open_as", ["folder", "file"])
def test_bad_onnx_graph_in_predictor(case: str, open_as: str, bad_graphs: dict[str, Path]) -> None:
    path = bad_graphs[case]
    target = path.parent if open_as == "folder" and path.suffix else path
    assert_names_the_file(lambda: Predictor.open(target), target, ModelFileError)


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "garbage", "text"])
def test_bad_onnx_graph_in_lint(case: str, bad_graphs: dict[str, Path]) -> None:
    from dpnet_export.lint import lint_onnx

    path = bad_graphs[case]
    assert_names_the_file(lambda: lint_onnx(path), path, ModelFileError)


# --- TensorRT engine sidecar and bytes (read without TensorRT) --------------------------------


SIDECAR_CASES: dict[str, object] = {
    "missing": None,
    "empty": b"",
    "garbage": GARBAGE,
    "not an object": [1, 2],
    "other format": {"format": "x", "version": 1},
    "other version": {"format": "dpnet-engine", "version": 99},
    "missing fields": {"format": "dpnet-engine", "version": 2},
}


@pytest.mark.parametrize("case", SIDECAR_CASES)
def test_bad_engine_sidecar(case: str, tmp_path: Path) -> None:
    from dpnet_runtime.backends import trt_sidecar as trt

    assert trt.SIDECAR_FORMAT == "dpnet-engine" and trt.SIDECAR_VERSION == 2
    path = tmp_path / "dpnet.engine.json"
    content = SIDECAR_CASES[case]
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    assert_names_the_file(lambda: trt.read_sidecar(path), path, ModelFileError)


def test_truncated_engine_bytes_are_caught_by_the_sidecar_hash(tmp_path: Path) -> None:
    from dpnet_runtime.backends import trt_sidecar as trt
    from dpnet_runtime.fileio import sha256_bytes

    engine = tmp_path / "dpnet.engine"
    sidecar = trt.EngineSidecar(
        onnx_file="dpnet.onnx", onnx_sha256="0", engine_sha256=sha256_bytes(GARBAGE),
        cache_key="k", tensorrt_version="10.0.0", gpu_name="gpu", compute_capability="9.0",
        precision="fp16", strongly_typed=True, tf32=False, profiles=(), workspace_bytes=1,
        build_seconds=0.0, built_at="now", dpnet_version="0",
    )  # fmt: skip
    check = lambda: trt.check_engine_bytes(engine, GARBAGE[:100], sidecar)  # noqa: E731
    assert_names_the_file(check, engine, ModelFileError)


# --- images, masks, split lists ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_images")
    good = folder / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(good)
    paths = _bad_variants(folder, good)
    paths["folder"] = folder / "empty"
    return paths


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "garbage", "text", "folder"])
@pytest.mark.parametrize("loader", [load_image, load_mask])
def test_bad_image_file(
    case: str, loader: Callable[[Path], np.ndarray], bad_images: dict[str, Path]
) -> None:
    path = bad_images[case]
    assert_names_the_file(lambda: loader(path), path, InputError)


@pytest.mark.parametrize(
    ("case", "content"),
    [
        ("missing", None),
        ("garbage", GARBAGE),
        ("malformed line", b"2007_000032 15\n"),
    ],
)
def test_bad_split_list(case: str, content: bytes | None, tmp_path: Path) -> None:
    from dpnet.data.pascal import read_hsnet_list

    path = tmp_path / "fold0.txt"
    if content is not None:
        path.write_bytes(content)
    assert_names_the_file(lambda: read_hsnet_list(path), path, DatasetError)


def _coco_root(folder: Path, annotations: bytes) -> Path:
    for name in ("train2014", "val2014", "annotations"):
        (folder / name).mkdir()
    (folder / "annotations" / "instances_val2014.json").write_bytes(annotations)
    return folder


@pytest.mark.parametrize(
    ("case", "content"),
    [
        ("empty", b""),
        ("truncated", b'{"images": [{"id": 1'),
        ("garbage", GARBAGE),
        ("not a COCO file", b'{"hello": 1}'),
        ("a JSON list", b"[1, 2]"),
    ],
)
def test_bad_coco_annotations(case: str, content: bytes, tmp_path: Path) -> None:
    from dpnet.data.coco import CocoDataset

    root = _coco_root(tmp_path, content)
    path = root / "annotations" / "instances_val2014.json"
    build = lambda: CocoDataset(root, fold=0, split="val", shots=1, seed=0)  # noqa: E731
    assert_names_the_file(build, path, DatasetError)
