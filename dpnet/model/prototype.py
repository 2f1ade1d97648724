"""Masked average pooling: the prototype P of a support feature."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["masked_average_pooling", "resize_mask"]

_EPS = 1e-5


def resize_mask(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize binary masks ``[N, H, W]`` to ``[N, h, w]`` soft masks in [0, 1]."""
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
