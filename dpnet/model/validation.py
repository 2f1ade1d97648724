"""Input checks for a DPNet episode batch; each error names the tensor and the expected shape."""

from __future__ import annotations

import torch
from torch import Tensor

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import InputError

__all__ = ["validate_episode"]


def validate_episode(support_images: Tensor, support_masks: Tensor, query_image: Tensor) -> None:
    """Check ranks, channels, matching B/K/H/W and mask values {0, 1, 255}.

    Raises:
        InputError: (a ``ValueError``) naming the tensor, what it got and what was expected.
    """
    _check_rank("support_images", support_images, 5, "[B, K, 3, H, W]")
    _check_rank("support_masks", support_masks, 4, "[B, K, H, W]")
    _check_rank("query_image", query_image, 4, "[B, 3, H, W]")
    batch, shots, channels, height, width = support_images.shape
    if channels != 3:
        raise InputError(
            f"support_images must be [B, K, 3, H, W] RGB, got {tuple(support_images.shape)}"
        )
    if query_image.shape[1] != 3:
        raise InputError(f"query_image must be [B, 3, H, W] RGB, got {tuple(query_image.shape)}")
    if shots < 1:
        raise InputError("support_images has K = 0 shots; give at least one support image")
    if query_image.shape[0] != batch:
        raise InputError(
            f"query_image has B = {query_image.shape[0]} but support_images has B = {batch}"
        )
    expected = (batch, shots, height, width)
    if tuple(support_masks.shape) != expected:
        raise InputError(
            f"support_masks must be [B, K, H, W] = {list(expected)} to match support_images, "
            f"got {list(support_masks.shape)}"
        )
    if not support_images.is_floating_point() or not query_image.is_floating_point():
        raise InputError("support_images and query_image must be float tensors (normalised RGB)")
    valid = (support_masks == 0) | (support_masks == 1) | (support_masks == IGNORE_LABEL)
    if not bool(valid.all()):
        odd = torch.unique(support_masks[~valid])[:5].tolist()
        raise InputError(f"support_masks may only hold 0, 1 and 255 (ignore), found {odd}")


def _check_rank(name: str, tensor: Tensor, rank: int, layout: str) -> None:
    if tensor.dim() != rank:
        raise InputError(f"{name} must have rank {rank} {layout}, got shape {list(tensor.shape)}")
