"""Augmentation and episode tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpnet.data.episode import Episode, episode_rng
from dpnet.data.transforms import collate, episode_to_tensors, train_augment
from dpnet_runtime.errors import InputError
from dpnet_runtime.preprocess import normalize_images, resize_image, resize_label_nearest


def _pair(height: int = 40, width: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[30:36, 40:46] = 1  # a small object near a corner, easy to crop away
    mask[29, 40:46] = 255
    return image, mask


def _episode(shots: int) -> Episode:
    image, mask = _pair()
    return Episode(
        query_image=image,
        query_mask=mask,
        support_images=tuple(image[::-1].copy() for _ in range(shots)),
        support_masks=tuple(mask[::-1].copy() for _ in range(shots)),
        class_id=3,
        query_name="q",
        support_names=tuple(f"s{k}" for k in range(shots)),
    )


def test_train_augment_shapes_values_and_determinism() -> None:
    image, mask = _pair()
    saw_rotation_fill = False
    for index in range(20):
        out_image, out_mask = train_augment(image, mask, 33, episode_rng(0, index))
        assert out_image.shape == (33, 33, 3) and out_image.dtype == np.uint8
        assert out_mask.shape == (33, 33) and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask).tolist()) <= {0, 1, 255}
        assert (out_mask == 1).any()  # the crop keeps the object
        # Ignore pixels beyond row 29's band come from the rotation fill.
        saw_rotation_fill |= (out_mask == 255).sum() > 12
        again_image, again_mask = train_augment(image, mask, 33, episode_rng(0, index))
        assert np.array_equal(out_image, again_image) and np.array_equal(out_mask, again_mask)
    assert saw_rotation_fill


def test_eval_tensors_use_the_runtime_resize_and_normalisation() -> None:
    episode = _episode(shots=2)
    tensors = episode_to_tensors(episode, 33, augment=False)
    assert tensors.support_images.shape == (2, 3, 33, 33)
    assert tensors.support_masks.shape == (2, 33, 33)
    assert tensors.support_masks.dtype == torch.float32
    assert tensors.query_image.shape == (3, 33, 33)
    assert tensors.query_mask.dtype == torch.int64
    expected = normalize_images(resize_image(episode.query_image, 33))
    assert np.array_equal(tensors.query_image.numpy(), expected)
    assert np.array_equal(tensors.query_mask.numpy(), resize_label_nearest(episode.query_mask, 33))
    assert set(tensors.support_masks.unique().tolist()) == {0.0, 1.0, 255.0}


def test_augmented_tensors_and_collate() -> None:
    items = [
        episode_to_tensors(_episode(3), 33, augment=True, rng=episode_rng(1, i)) for i in range(2)
    ]
    batch = collate(items)
    assert batch.support_images.shape == (2, 3, 3, 33, 33)
    assert batch.support_masks.shape == (2, 3, 33, 33)
    assert batch.query_image.shape == (2, 3, 33, 33)
    assert batch.query_mask.shape == (2, 33, 33)
    with pytest.raises(InputError):
        episode_to_tensors(_episode(1), 33, augment=True)
