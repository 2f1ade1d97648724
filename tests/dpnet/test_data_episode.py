"""Episode sampling shared by every dataset: seeds, list files, fold splits."""

from __future__ import annotations

import numpy as np
import pytest

from dpnet.data import build_dataset
from dpnet.data.episode import (
    binary_mask,
    episode_rng,
    fold_class_ids,
    group_by_class,
    plan_list_episode,
    plan_seeded_episode,
    split_class_ids,
)
from dpnet_runtime.errors import DatasetError, InputError

ENTRIES = [(f"img{i}", 1 + i % 3) for i in range(12)] + [("img0", 2)]


def test_episode_rng_depends_only_on_seed_and_index() -> None:
    first = episode_rng(3, 7).integers(1 << 30, size=4)
    assert np.array_equal(first, episode_rng(3, 7).integers(1 << 30, size=4))
    assert not np.array_equal(first, episode_rng(3, 8).integers(1 << 30, size=4))
    assert not np.array_equal(first, episode_rng(4, 7).integers(1 << 30, size=4))
    # Fixed values: PCG64 seeded by SeedSequence([seed, index, *streams]) is platform
    # independent, so the episodes of a seed never change across machines and releases.
    assert first.tolist() == [570037751, 732538785, 1039028702, 644393075]
    assert int(episode_rng(0, 0).integers(1000)) == 850
    assert episode_rng(3, 7, 2).integers(1000, size=3).tolist() == [892, 423, 405]


def test_fold_splits() -> None:
    assert fold_class_ids(20, 3) == (16, 17, 18, 19, 20)
    assert fold_class_ids(80, 1, interleaved=True) == tuple(range(2, 81, 4))
    assert fold_class_ids(80, 1) == tuple(range(21, 41))
    train = split_class_ids(20, 0, "train")
    assert train == tuple(range(6, 21))
    with pytest.raises(InputError):
        fold_class_ids(20, 4)
    with pytest.raises(InputError):
        split_class_ids(20, 0, "test")


def test_list_episode_query_cycles_through_the_list_with_distinct_supports() -> None:
    pools = group_by_class(ENTRIES)
    for index in range(30):
        plan = plan_list_episode(ENTRIES, pools, index, 3, episode_rng(0, index))
        assert (plan.query_name, plan.class_id) == ENTRIES[index % len(ENTRIES)]
        assert len(set(plan.support_names)) == 3
        assert plan.query_name not in plan.support_names
        assert set(plan.support_names) <= set(pools[plan.class_id])


def test_seeded_episode_samples_every_class_with_distinct_images() -> None:
    pools = group_by_class(ENTRIES)
    plans = [plan_seeded_episode(pools, (1, 2, 3), 2, episode_rng(5, i)) for i in range(60)]
    assert {plan.class_id for plan in plans} == {1, 2, 3}
    for plan in plans:
        names = {plan.query_name, *plan.support_names}
        assert len(names) == 3 and names <= set(pools[plan.class_id])


def test_too_few_images_for_the_shots_is_a_dataset_error() -> None:
    pools = {1: ("a", "b")}
    with pytest.raises(DatasetError, match="2 supports needed"):
        plan_seeded_episode(pools, (1,), 2, episode_rng(0, 0))


def test_binary_mask_keeps_ignore_and_drops_other_classes() -> None:
    label = np.array([[0, 3, 5, 255]], dtype=np.uint8)
    assert binary_mask(label, 3).tolist() == [[0, 1, 0, 255]]


def test_build_dataset_rejects_unknown_names_and_options() -> None:
    with pytest.raises(InputError, match="unknown dataset"):
        build_dataset("imagenet", root=None, fold=0, split="val", shots=1, seed=0, episodes=1)
    with pytest.raises(InputError, match="no option"):
        build_dataset(
            "synthetic", root=None, fold=0, split="val", shots=1, seed=0, episodes=1, colour=1
        )
    with pytest.raises(DatasetError, match="needs --data-root"):
        build_dataset("pascal", root=None, fold=0, split="val", shots=1, seed=0, episodes=1)
