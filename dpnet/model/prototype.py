"""Masked average pooling: the prototype P of a support feature."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_to_feature_size", "masked_average_pooling"]

_EPS = 1e-5


def mask_to_feature_size(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Binary masks ``[N, H, W]`` at the feature size: ``[N, h, w]`` soft masks in [0, 1].

    Bilinear (``align_corners=True``), so a border position gets the object's share of it;
    the opposite of :func:`dpnet_runtime.preprocess.resize_label_nearest`, which keeps labels.
    """
    return F.interpolate(
        masks.unsqueeze(1), size=size, mode="bilinear", align_corners=True
    ).squeeze(1)


def masked_average_pooling(features: Tensor, soft_mask: Tensor) -> Tensor:
    """P = sum(F * m) / sum(m) over positions.

    Args:
        features: ``[N, C, h, w]``.
        soft_mask: ``[N, h, w]`` weights in [0, 1].

    Returns:
        ``[N, C]`` prototypes; an all-zero mask gives a zero prototype (no division by zero).
    """
    weights = soft_mask.unsqueeze(1)
    return (features * weights).sum(dim=(2, 3)) / (weights.sum(dim=(2, 3)) + _EPS)
