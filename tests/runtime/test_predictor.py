"""Predictor and artifact resolution, end to end through ONNX Runtime.

Most tests drive the real 65 x 65 export of a random-weight tiny DPNet (``small_export``, K in
1..2; ``small_raw_export`` with ``--raw-input`` and FP16 copies). Tests named ``fake`` use the
colour-prototype graphs of ``conftest.py`` where a real export cannot serve: to check that the
mask lands on the object at the original size (a random DPNet segments nothing), dynamic image
sides (multi-scale) and spoilt metadata.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import Predictor, SegmentResult, contract
from dpnet_runtime.artifacts import resolve_artifacts
from dpnet_runtime.errors import IncompatibleModelError, InputError, ModelFileError

Scene = Callable[..., tuple[np.ndarray, np.ndarray]]
SIZE, FEATURE_SIZE, MAX_SHOTS = 65, 9, 2  # small_export: --size 65 --max-shots 2; h = 64 // 8 + 1


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


def _assert_same(got: SegmentResult, want: SegmentResult) -> None:
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.probability, want.probability, atol=1e-5)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-4)
    assert got.pseudo_count == want.pseudo_count


def _episode(
    scene: Scene, shots: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """K support images and masks of different sizes, a query and its true mask."""
    supports = [scene(40 + 4 * k, 48, 5, 10 + k, 20) for k in range(shots)]
    query, truth = scene(50, 60, 20, 25, 22)
    return [image for image, _ in supports], [mask for _, mask in supports], query, truth


def _copy_graphs(export: Path, folder: Path, *names: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(export / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def predictor(small_export: Path) -> Iterator[Predictor]:
    with Predictor.open(small_export, intra_op_threads=1) as opened:
        yield opened


@pytest.mark.parametrize("shots", [1, 2])
def test_episode_outputs_have_the_query_size_and_contract_shapes(
    predictor: Predictor, scene: Scene, shots: int
) -> None:
    result = predictor.run_episode(*_episode(scene, shots)[:3])
    assert result.mask.shape == (50, 60) and result.mask.dtype == np.uint8
    assert result.probability.shape == (50, 60) and result.probability.dtype == np.float32
    np.testing.assert_array_equal(result.mask, result.probability > 0.5)
    assert result.logits.shape == (2, SIZE, SIZE)
    assert result.confidence is not None
    assert result.confidence.shape == (shots, FEATURE_SIZE, FEATURE_SIZE)
    assert result.pseudo_count == int(result.confidence.sum())


@pytest.mark.parametrize("shots", [1, 5])
def test_fake_graphs_segment_the_object_at_original_size(
    fake_export_dir: Path, scene: Scene, shots: int
) -> None:
    images, masks, query, truth = _episode(scene, shots)
    with Predictor.open(fake_export_dir, intra_op_threads=1) as predictor:
        result = predictor.run_episode(images, masks, query)
    assert result.mask.shape == (50, 60)
    assert _iou(result.mask, truth) > 0.95


def test_cached_support_matches_the_episode_graph(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    support = predictor.encode_support([image, image], [mask, mask])
    assert predictor.has_split and support.shots == 2
    assert set(support.feeds[0]) == set(contract.GRAPHS[contract.SUPPORT].output_names)
    for top in (3, 20):
        query, _ = scene(50, 60, top, 25, 22)
        _assert_same(
            predictor.segment(query, support), predictor.run_episode([image] * 2, [mask] * 2, query)
        )


def test_episode_only_export_still_encodes_support(
    predictor: Predictor, small_export: Path, scene: Scene, tmp_path: Path
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, _ = scene(50, 60, 20, 25, 22)
    with Predictor.open(_copy_graphs(small_export, tmp_path, "dpnet.onnx")) as episode_only:
        assert not episode_only.has_split
        result = episode_only.segment(query, episode_only.encode_support([image], [mask]))
    _assert_same(result, predictor.run_episode([image], [mask], query))


def test_split_only_export_runs_episodes(
    predictor: Predictor, small_export: Path, scene: Scene, tmp_path: Path
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, _ = scene(50, 60, 20, 25, 22)
    folder = _copy_graphs(small_export, tmp_path, "dpnet_support.onnx", "dpnet_query.onnx")
    with Predictor.open(folder) as split_only:
        assert split_only.has_split
        result = split_only.run_episode([image], [mask], query)
    _assert_same(result, predictor.run_episode([image], [mask], query))


def test_raw_input_graphs_match_normalised_graphs(
    small_raw_export: Path, predictor: Predictor, scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, _ = scene(50, 60, 20, 25, 22)
    with Predictor.open(small_raw_export) as raw:
        assert raw.info.raw_input and not predictor.info.raw_input
        raw_result = raw.run_episode([image], [mask], query)
    result = predictor.run_episode([image], [mask], query)
    np.testing.assert_allclose(raw_result.probability, result.probability, atol=1e-4)
    np.testing.assert_allclose(raw_result.logits, result.logits, atol=1e-3)


def test_multi_scale_is_refused_on_fixed_size_graphs(small_export: Path) -> None:
    with pytest.raises(InputError, match=r"needs graphs that accept other image sizes.*65x65"):
        Predictor.open(small_export, multi_scale=(0.7, 1.0, 1.3))


def test_fake_dynamic_size_graphs_run_multi_scale(
    make_fake_export_dir: Callable[..., Path], scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    with Predictor.open(make_fake_export_dir(size="H"), multi_scale=(0.7, 1.0, 1.3)) as predictor:
        assert predictor.sizes == (22, 32, 42)
        support = predictor.encode_support([image], [mask])
        assert [feed[contract.SUPPORT_FG].shape[-1] for feed in support.feeds] == [3, 4, 6]
        result = predictor.segment(query, support)
        assert result.logits.shape == (2, 32, 32)
        assert _iou(result.mask, truth) > 0.95
        assert _iou(predictor.run_episode([image], [mask], query).mask, truth) > 0.95


@pytest.mark.parametrize("scales", [(), (0.0, 1.0)])
def test_bad_scales_are_rejected(small_export: Path, scales: tuple[float, ...]) -> None:
    with pytest.raises(InputError, match="multi_scale must be positive"):
        Predictor.open(small_export, multi_scale=scales)


def test_bad_inputs_raise_input_errors(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    with pytest.raises(InputError, match="query image must be \\[H, W, 3\\] RGB, got rank 2"):
        predictor.run_episode([image], [mask], image[..., 0])
    with pytest.raises(InputError, match="support image 1 must have 3 channels"):
        predictor.encode_support([image[..., :2]], [mask])
    with pytest.raises(InputError, match="support mask 2 has no object pixel"):
        predictor.encode_support([image, image], [mask, np.zeros_like(mask)])


def test_support_set_of_another_predictor_is_rejected(
    predictor: Predictor, small_export: Path, scene: Scene, tmp_path: Path
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    with Predictor.open(_copy_graphs(small_export, tmp_path, "dpnet.onnx")) as episode_only:
        foreign = episode_only.encode_support([image], [mask])
    with pytest.raises(InputError, match="encoded by another Predictor"):
        predictor.segment(image, foreign)


def test_max_shots_comes_from_metadata(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    assert predictor.info.max_shots == MAX_SHOTS  # not the exporter's default of 5
    with pytest.raises(InputError, match="got 3 support shots but the graph allows at most 2"):
        predictor.run_episode([image] * 3, [mask] * 3, image)


def test_precision_selects_fp16_copies(small_raw_export: Path, scene: Scene) -> None:
    files = resolve_artifacts(small_raw_export, "ort", "fp16").files
    assert {role: path.name for role, path in files.items()} == {
        "episode": "dpnet_fp16.onnx",
        "support": "dpnet_support_fp16.onnx",
        "query": "dpnet_query_fp16.onnx",
    }
    image, mask = scene(40, 48, 5, 10, 20)
    with Predictor.open(small_raw_export, precision="fp16") as predictor:
        assert {path.name for path in predictor.files} == {path.name for path in files.values()}
        assert predictor.run_episode([image], [mask], image).mask.shape == (40, 48)
    with pytest.raises(InputError, match="backend 'ort' has no 'int4' format; choose one of fp32"):
        Predictor.open(small_raw_export, precision="int4")


def test_precision_int8_opens_the_int8_copies_only_fake(
    make_fake_export_dir: Callable[..., Path],
) -> None:
    folder = make_fake_export_dir(int8=True)
    with Predictor.open(folder, precision="int8") as predictor:
        assert sorted(path.name for path in predictor.files) == [
            "dpnet_int8.onnx",
            "dpnet_query_int8.onnx",
            "dpnet_support_int8.onnx",
        ]
    with pytest.raises(ModelFileError, match=r"holds no ort-int8 .* --precision int8"):
        Predictor.open(make_fake_export_dir(), precision="int8")


def test_missing_and_empty_directories_name_the_export_command(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist; create it with dpnet-export onnx"):
        Predictor.open(tmp_path / "absent")
    with pytest.raises(ModelFileError, match=r"holds no ort model .*dpnet-export onnx --ckpt"):
        Predictor.open(tmp_path)
    with pytest.raises(ModelFileError, match="--precision fp16"):
        Predictor.open(tmp_path, precision="fp16")


def test_single_file_opens_its_graph_set(small_export: Path, tmp_path: Path) -> None:
    with Predictor.open(small_export / "dpnet.onnx") as predictor:
        assert not predictor.has_split
    with Predictor.open(small_export / "dpnet_query.onnx") as predictor:
        assert predictor.has_split
    shutil.copy(small_export / "dpnet_query.onnx", tmp_path / "dpnet_query.onnx")
    with pytest.raises(ModelFileError, match="needs its support partner"):
        Predictor.open(tmp_path / "dpnet_query.onnx")


def test_renamed_graph_is_incompatible(small_export: Path, tmp_path: Path) -> None:
    shutil.copy(small_export / "dpnet_support.onnx", tmp_path / "dpnet.onnx")
    with pytest.raises(IncompatibleModelError, match="is a 'support' graph but was opened as"):
        Predictor.open(tmp_path)


def test_malformed_metadata_in_a_fake_graph_is_a_model_file_error(
    make_fake_export_dir: Callable[..., Path],
) -> None:
    folder = make_fake_export_dir(roles=("episode",), metadata={contract.META_MAX_SHOTS: "five"})
    with pytest.raises(ModelFileError, match="max_shots='five' is not an integer"):
        Predictor.open(folder)


def test_truncated_graph_in_directory_is_a_model_file_error(
    small_export: Path, tmp_path: Path
) -> None:
    data = (small_export / "dpnet.onnx").read_bytes()
    (tmp_path / "dpnet.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="cannot be loaded by the ort backend"):
        Predictor.open(tmp_path)


def test_concurrent_calls_match_sequential_calls(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    support = predictor.encode_support([image], [mask])
    queries = [scene(50, 60, top, 25, 22)[0] for top in range(0, 28, 3)]
    expected = [predictor.segment(query, support) for query in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda query: predictor.segment(query, support), queries))
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.logits, want.logits)


@pytest.mark.parametrize("graphs", [None, ("dpnet.onnx",)])
def test_segment_batch_equals_one_query_at_a_time(
    small_export: Path, scene: Scene, tmp_path: Path, graphs: tuple[str, ...] | None
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    queries = [scene(50 + 7 * i, 60 - 5 * i, 3 * i, 25 - i, 22)[0] for i in range(4)]
    folder = small_export if graphs is None else _copy_graphs(small_export, tmp_path, *graphs)
    with Predictor.open(folder, intra_op_threads=1) as predictor:
        support = predictor.encode_support([image, image], [mask, mask])
        batch = predictor.segment_batch(queries, support)
        single = [predictor.segment(query, support) for query in queries]
        assert predictor.max_batch is None  # dynamic B on ONNX Runtime
    assert len(batch) == len(queries)
    for got, want, query in zip(batch, single, queries, strict=True):
        assert got.mask.shape == query.shape[:2]
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.probability, want.probability)
        assert got.pseudo_count == want.pseudo_count


def test_segment_batch_rejects_no_query_and_names_the_bad_one(
    predictor: Predictor, scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    support = predictor.encode_support([image], [mask])
    with pytest.raises(InputError, match="at least one query"):
        predictor.segment_batch([], support)
    with pytest.raises(InputError, match="query image 2 must be uint8"):
        predictor.segment_batch([image, image.astype(np.float32)], support)
