"""Predictor and artifact resolution, end to end through ONNX Runtime on contract graphs."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import Predictor, contract
from dpnet_runtime.artifacts import resolve_artifacts
from dpnet_runtime.errors import IncompatibleModelError, InputError, ModelFileError

Scene = Callable[..., tuple[np.ndarray, np.ndarray]]


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


@pytest.fixture
def predictor(export_dir: Path) -> Iterator[Predictor]:
    with Predictor.open(export_dir, intra_op_threads=1) as opened:
        yield opened


@pytest.mark.parametrize("shots", [1, 5])
def test_episode_segments_the_object_at_original_size(
    predictor: Predictor, scene: Scene, shots: int
) -> None:
    supports = [scene(40 + 4 * k, 48, 5, 10 + k, 20) for k in range(shots)]
    query, truth = scene(50, 60, 20, 25, 22)
    result = predictor.run_episode([s[0] for s in supports], [s[1] for s in supports], query)
    assert result.mask.shape == (50, 60) and result.mask.dtype == np.uint8
    assert result.probability.shape == (50, 60)
    assert result.logits.shape == (2, 32, 32)
    assert result.confidence is not None and result.confidence.shape == (shots, 4, 4)
    assert result.pseudo_count == int(result.confidence.sum())
    assert _iou(result.mask, truth) > 0.95


def test_cached_support_matches_the_episode_graph(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    support = predictor.encode_support([image, image], [mask, mask])
    assert predictor.has_split and support.shots == 2
    assert set(support.feeds[0]) == set(("support_cos_feats", "support_fg", "prototypes"))
    for top in (3, 20):
        query, _ = scene(50, 60, top, 25, 22)
        cached = predictor.segment(query, support)
        episode = predictor.run_episode([image, image], [mask, mask], query)
        np.testing.assert_array_equal(cached.mask, episode.mask)
        np.testing.assert_allclose(cached.probability, episode.probability, atol=1e-5)
        assert cached.pseudo_count == episode.pseudo_count


def test_episode_only_export_still_encodes_support(
    make_export_dir: Callable[..., Path], scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    with Predictor.open(make_export_dir(roles=("episode",))) as predictor:
        assert not predictor.has_split
        result = predictor.segment(query, predictor.encode_support([image], [mask]))
    assert _iou(result.mask, truth) > 0.95


def test_split_only_export_runs_episodes(
    make_export_dir: Callable[..., Path], scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    with Predictor.open(make_export_dir(roles=("support", "query"))) as predictor:
        assert _iou(predictor.run_episode([image], [mask], query).mask, truth) > 0.95


def test_raw_input_graphs_match_normalised_graphs(
    make_export_dir: Callable[..., Path], predictor: Predictor, scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    query, _ = scene(50, 60, 20, 25, 22)
    with Predictor.open(make_export_dir(raw=True)) as raw:
        assert raw.info.raw_input
        raw_result = raw.run_episode([image], [mask], query)
    result = predictor.run_episode([image], [mask], query)
    np.testing.assert_allclose(raw_result.probability, result.probability, atol=1e-4)


def test_multi_scale_needs_dynamic_sides(
    export_dir: Path, make_export_dir: Callable[..., Path], scene: Scene
) -> None:
    with pytest.raises(InputError, match=r"needs graphs that accept other image sizes.*32x32"):
        Predictor.open(export_dir, multi_scale=(0.7, 1.0, 1.3))
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    with Predictor.open(make_export_dir(size="H"), multi_scale=(0.7, 1.0, 1.3)) as predictor:
        assert predictor.sizes == (22, 32, 42)
        support = predictor.encode_support([image], [mask])
        assert [feed[contract.SUPPORT_FG].shape[-1] for feed in support.feeds] == [3, 4, 6]
        result = predictor.segment(query, support)
        assert result.logits.shape == (2, 32, 32)
        assert _iou(result.mask, truth) > 0.95
        assert _iou(predictor.run_episode([image], [mask], query).mask, truth) > 0.95


@pytest.mark.parametrize("scales", [(), (0.0, 1.0)])
def test_bad_scales_are_rejected(export_dir: Path, scales: tuple[float, ...]) -> None:
    with pytest.raises(InputError, match="multi_scale must be positive"):
        Predictor.open(export_dir, multi_scale=scales)


def test_bad_inputs_raise_input_errors(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    with pytest.raises(InputError, match="query image must be \\[H, W, 3\\] RGB, got rank 2"):
        predictor.run_episode([image], [mask], image[..., 0])
    with pytest.raises(InputError, match="support image 1 must have 3 channels"):
        predictor.encode_support([image[..., :2]], [mask])
    with pytest.raises(InputError, match="support mask 2 has no object pixel"):
        predictor.encode_support([image, image], [mask, np.zeros_like(mask)])
    with pytest.raises(InputError, match="got 6 support shots but the graph allows at most 5"):
        predictor.encode_support([image] * 6, [mask] * 6)


def test_support_set_of_another_predictor_is_rejected(
    predictor: Predictor, make_export_dir: Callable[..., Path], scene: Scene
) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    with Predictor.open(make_export_dir(roles=("episode",))) as episode_only:
        foreign = episode_only.encode_support([image], [mask])
    with pytest.raises(InputError, match="encoded by another Predictor"):
        predictor.segment(image, foreign)


def test_max_shots_comes_from_metadata(make_export_dir: Callable[..., Path], scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    with Predictor.open(make_export_dir(max_shots=2)) as predictor:
        assert predictor.info.max_shots == 2
        with pytest.raises(InputError, match="at most 2; pass fewer shots or re-export"):
            predictor.run_episode([image] * 3, [mask] * 3, image)


def test_precision_selects_fp16_copies(make_export_dir: Callable[..., Path]) -> None:
    folder = make_export_dir(fp16=True)
    files = resolve_artifacts(folder, contract.FORMATS["ort-fp16"]).files
    assert files["episode"].name == "dpnet_fp16.onnx"
    with Predictor.open(folder, precision="fp16") as predictor:
        assert predictor.has_split
    with pytest.raises(InputError, match="backend 'ort' has no 'int4' format; choose one of fp32"):
        Predictor.open(folder, precision="int4")


def test_missing_and_empty_directories_name_the_export_command(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist; create it with dpnet-export onnx"):
        Predictor.open(tmp_path / "absent")
    with pytest.raises(ModelFileError, match=r"holds no ort model .*dpnet-export onnx --ckpt"):
        Predictor.open(tmp_path)
    with pytest.raises(ModelFileError, match="--fp16"):
        Predictor.open(tmp_path, precision="fp16")


def test_single_file_opens_its_graph_set(export_dir: Path, tmp_path: Path) -> None:
    with Predictor.open(export_dir / "dpnet.onnx") as predictor:
        assert not predictor.has_split
    with Predictor.open(export_dir / "dpnet_query.onnx") as predictor:
        assert predictor.has_split
    shutil.copy(export_dir / "dpnet_query.onnx", tmp_path / "dpnet_query.onnx")
    with pytest.raises(ModelFileError, match="needs its support partner"):
        Predictor.open(tmp_path / "dpnet_query.onnx")


def test_renamed_graph_is_incompatible(export_dir: Path, tmp_path: Path) -> None:
    shutil.copy(export_dir / "dpnet_support.onnx", tmp_path / "dpnet.onnx")
    with pytest.raises(IncompatibleModelError, match="is a 'support' graph but was opened as"):
        Predictor.open(tmp_path)


def test_malformed_metadata_is_a_model_file_error(make_export_dir: Callable[..., Path]) -> None:
    folder = make_export_dir(roles=("episode",), metadata={contract.META_MAX_SHOTS: "five"})
    with pytest.raises(ModelFileError, match="max_shots='five' is not an integer"):
        Predictor.open(folder)


def test_truncated_graph_in_directory_is_a_model_file_error(
    export_dir: Path, tmp_path: Path
) -> None:
    data = (export_dir / "dpnet.onnx").read_bytes()
    (tmp_path / "dpnet.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="cannot be loaded by the ort backend"):
        Predictor.open(tmp_path)


def test_concurrent_calls_match_sequential_calls(predictor: Predictor, scene: Scene) -> None:
    image, mask = scene(40, 48, 5, 10, 20)
    support = predictor.encode_support([image], [mask])
    queries = [scene(50, 60, top, 25, 22)[0] for top in range(0, 28, 3)]
    expected = [predictor.segment(query, support).mask for query in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        masks = list(pool.map(lambda query: predictor.segment(query, support).mask, queries))
    for got, want in zip(masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)
