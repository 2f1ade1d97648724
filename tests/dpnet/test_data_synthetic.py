"""The embedded synthetic benchmark: determinism, folds, episodes."""

from __future__ import annotations

import numpy as np
import pytest

from dpnet.data import build_dataset
from dpnet.data.episode import Episode, episode_rng
from dpnet.data.synthetic import NUM_CLASSES, SyntheticDataset, class_parts, render_scene


def _dataset(split: str, fold: int = 0, seed: int = 0, shots: int = 1) -> SyntheticDataset:
    dataset = build_dataset(
        "synthetic", root=None, fold=fold, split=split, shots=shots, seed=seed, episodes=40
    )
    assert isinstance(dataset, SyntheticDataset)
    return dataset


def test_classes_are_distinct_shape_texture_pairs() -> None:
    parts = {class_parts(c) for c in range(1, NUM_CLASSES + 1)}
    assert len(parts) == NUM_CLASSES
    for fold in range(4):  # every fold mixes all shapes, so a fold is not "one texture"
        fold_parts = [class_parts(5 * fold + j) for j in range(1, 6)]
        assert len({shape for shape, _ in fold_parts}) == 5


@pytest.mark.parametrize("class_id", range(1, NUM_CLASSES + 1))
def test_every_class_renders_visibly_with_an_ignore_border(class_id: int) -> None:
    image, label = render_scene(class_id, (), episode_rng(1, class_id), size=96)
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, class_id, 255}
    assert (label == class_id).sum() > 100


def test_render_is_deterministic() -> None:
    first = render_scene(4, (1, 2, 3), episode_rng(9, 2))
    second = render_scene(4, (1, 2, 3), episode_rng(9, 2))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _same_episode(a: Episode, b: Episode) -> bool:
    arrays = zip(
        (a.query_image, a.query_mask, *a.support_images, *a.support_masks),
        (b.query_image, b.query_mask, *b.support_images, *b.support_masks),
        strict=True,
    )
    same_names = a.query_name == b.query_name and a.support_names == b.support_names
    return a.class_id == b.class_id and same_names and all(np.array_equal(x, y) for x, y in arrays)


def test_same_seed_same_episodes_in_any_order_and_other_seed_differs() -> None:
    order = [7, 2, 5, 0, 7, 3, 1, 6, 4, 2]  # backwards, skipping and repeating
    shuffled = _dataset("val", shots=2)
    reads = [(index, shuffled[index]) for index in order]
    fresh = _dataset("val", shots=2)
    in_order = [fresh[index] for index in range(8)]
    for index, episode in reads:
        assert _same_episode(episode, in_order[index]), index
    assert len({episode.class_id for episode in in_order}) > 1  # the episodes do differ
    other = _dataset("val", seed=1, shots=2)[7]
    assert not np.array_equal(in_order[7].query_image, other.query_image)


def test_query_and_supports_are_distinct_images_of_the_episode_class() -> None:
    dataset = _dataset("val", fold=2, shots=3)
    for index in range(5):
        episode = dataset[index]
        assert episode.shots == 3 and episode.class_id in dataset.class_ids
        names = [episode.query_name, *episode.support_names]
        assert len(set(names)) == 4
        images = [episode.query_image, *episode.support_images]
        assert all(not np.array_equal(images[0], other) for other in images[1:])
        for mask in (episode.query_mask, *episode.support_masks):
            assert (mask == 1).any() and set(np.unique(mask).tolist()) <= {0, 1, 255}


@pytest.mark.parametrize("fold", range(4))
def test_val_episodes_cover_exactly_the_fold_classes(fold: int) -> None:
    dataset = _dataset("val", fold=fold)
    rng_classes = set()
    for index in range(len(dataset)):
        rng_classes.add(dataset[index].class_id)
    assert rng_classes == set(range(5 * fold + 1, 5 * fold + 6))


def test_training_scenes_never_show_the_fold_classes() -> None:
    dataset = _dataset("train", fold=1)
    assert set(dataset.class_ids) == set(range(1, 21)) - set(range(6, 11))
    for index in range(10):
        assert dataset[index].class_id not in range(6, 11)
    # The scenes themselves hold training classes only: none of fold 1's objects at all.
    for index in range(10):
        _, label = dataset._scene(index, 0, dataset[index].class_id)
        assert not np.isin(label, range(6, 11)).any()


def test_train_and_val_streams_differ() -> None:
    train, val = _dataset("train"), _dataset("val")
    assert not np.array_equal(train[0].query_image, val[0].query_image)
