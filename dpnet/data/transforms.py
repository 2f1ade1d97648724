"""Training augmentation, and episodes turned into batched network tensors.

Evaluation resizing is *not* defined here: it is the runtime's canonical
:func:`dpnet_runtime.preprocess.resize_image` (PIL bilinear) and
:func:`~dpnet_runtime.preprocess.resize_label_nearest` (PIL nearest), with
:func:`~dpnet_runtime.preprocess.normalize_images`, so PyTorch and every exported backend
see the same pixels. Augmentation (train only, as the paper and PFENet): horizontal flip,
rotation by up to ±10°, a random crop of 60-100 % of each side, then that same resize.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from dpnet.data.episode import Episode
from dpnet_runtime.contract import IGNORE_LABEL, IMAGENET_MEAN
from dpnet_runtime.errors import InputError
from dpnet_runtime.preprocess import normalize_images, resize_image, resize_label_nearest

__all__ = ["EpisodeTensors", "collate", "episode_to_tensors", "train_augment"]

MAX_ROTATION_DEGREES = 10.0
CROP_SIDE_RANGE = (0.6, 1.0)
_CROP_TRIES = 10
# Rotated-in corners get the mean colour, which normalises to zero.
_FILL_COLOUR = tuple(round(channel * 255) for channel in IMAGENET_MEAN)


class EpisodeTensors(NamedTuple):
    """Network inputs and target of one episode (or of B, after :func:`collate`).

    Attributes:
        support_images: float32 [K, 3, S, S] ([B, K, 3, S, S]) ImageNet-normalised RGB.
        support_masks: float32 [K, S, S] ([B, K, S, S]) in {0, 1, 255}.
        query_image: float32 [3, S, S] ([B, 3, S, S]).
        query_mask: int64 [S, S] ([B, S, S]) in {0, 1, 255}, the segmentation target.
    """

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_image: torch.Tensor
    query_mask: torch.Tensor


def _rotate(image: np.ndarray, mask: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    rotated_image = Image.fromarray(image).rotate(
        degrees, resample=Image.Resampling.BILINEAR, fillcolor=_FILL_COLOUR
    )
    rotated_mask = Image.fromarray(mask).rotate(
        degrees, resample=Image.Resampling.NEAREST, fillcolor=IGNORE_LABEL
    )
    return np.asarray(rotated_image), np.asarray(rotated_mask)


def _crop_box(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random crop (top, left, height, width) keeping object pixels if the mask has any."""
    height, width = mask.shape
    has_object = bool((mask == 1).any())
    for _ in range(_CROP_TRIES):
        crop_h = max(1, round(height * rng.uniform(*CROP_SIDE_RANGE)))
        crop_w = max(1, round(width * rng.uniform(*CROP_SIDE_RANGE)))
        top = int(rng.integers(height - crop_h + 1))
        left = int(rng.integers(width - crop_w + 1))
        window = mask[top : top + crop_h, left : left + crop_w]
        if not has_object or (window == 1).any():
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def train_augment(
    image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip, rotate, crop and resize one image/mask pair (training only).

    Args:
        image: [H, W, 3] uint8 RGB.
        mask: [H, W] uint8 in {0, 1, 255}.
        size: output side S.
        rng: the generator of this pair (all randomness comes from it).

    Returns:
        image [S, S, 3] uint8 (bilinear) and mask [S, S] uint8 (nearest; pixels rotated in
        from outside are 255 ignore). A crop never removes every object pixel.
    """
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    degrees = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)
    rotated_image, rotated_mask = _rotate(image, mask, degrees)
    if (mask == 1).any() and not (rotated_mask == 1).any():
        rotated_image, rotated_mask = image, mask  # the object rotated out of the frame
    top, left, crop_h, crop_w = _crop_box(rotated_mask, rng)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    cropped_image, cropped_mask = rotated_image[window], rotated_mask[window]
    return resize_image(cropped_image, size), resize_label_nearest(cropped_mask, size)


def episode_to_tensors(
    episode: Episode, size: int, *, augment: bool, rng: np.random.Generator | None = None
) -> EpisodeTensors:
    """Resize (and with ``augment``, augment) an episode into network tensors of side S.

    Args:
        episode: the episode at original sizes.
        size: network input side S.
        augment: apply :func:`train_augment` to every image independently.
        rng: the generator for augmentation (required when ``augment``).

    Returns:
        EpisodeTensors with K = ``episode.shots``.

    Raises:
        InputError: ``augment`` without ``rng``.
    """
    pairs = [(episode.query_image, episode.query_mask)]
    pairs += list(zip(episode.support_images, episode.support_masks, strict=True))
    if augment:
        if rng is None:
            raise InputError("episode_to_tensors(augment=True) needs rng, a numpy Generator")
        resized = [train_augment(image, mask, size, rng) for image, mask in pairs]
    else:
        resized = [
            (resize_image(image, size), resize_label_nearest(mask, size)) for image, mask in pairs
        ]
    images = normalize_images(np.stack([image for image, _ in resized]))
    masks = np.stack([mask for _, mask in resized])
    return EpisodeTensors(
        support_images=torch.from_numpy(images[1:]),
        support_masks=torch.from_numpy(masks[1:].astype(np.float32)),
        query_image=torch.from_numpy(images[0]),
        query_mask=torch.from_numpy(masks[0].astype(np.int64)),
    )


def collate(items: list[EpisodeTensors]) -> EpisodeTensors:
    """Stack episodes with the same K and S along a new leading batch axis B."""
    if not items:
        raise InputError("collate needs at least one episode")
    return EpisodeTensors(*(torch.stack(list(field)) for field in zip(*items, strict=True)))
