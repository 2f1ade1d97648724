"""Multi-scale inference (paper 5.3, Table 6): softmax averaged over input scales."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dpnet.model.dpnet import DPNet

__all__ = ["DEFAULT_SCALES", "multiscale_probabilities"]

DEFAULT_SCALES = (0.7, 1.0, 1.3)


@torch.no_grad()
def multiscale_probabilities(
    model: DPNet,
    support_images: Tensor,
    support_masks: Tensor,
    query_image: Tensor,
    *,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    output_size: tuple[int, int] | None = None,
    beta: float | None = None,
) -> Tensor:
    """Average of the class probabilities of the query and supports at several scales.

    Each scale resizes the query and support images (bilinear) and masks (nearest) by the
    factor, runs the model, and resizes the logits to ``output_size`` before the softmax.

    Args:
        support_images: ``[B, K, 3, H, W]``; support_masks: ``[B, K, H, W]``; query_image:
            ``[B, 3, H, W]``.
        output_size: size of the result; defaults to the query's H x W.

    Returns:
        ``[B, 2, *output_size]`` probabilities.
    """
    size = output_size or (query_image.shape[-2], query_image.shape[-1])
    batch, shots = support_images.shape[:2]
    total = torch.zeros(batch, 2, *size, device=query_image.device)
    for scale in scales:
        side = (round(query_image.shape[-2] * scale), round(query_image.shape[-1] * scale))
        images = _resize(support_images.flatten(0, 1), side, "bilinear")
        masks = _resize(support_masks.flatten(0, 1)[:, None], side, "nearest")[:, 0]
        support = model.encode_support(
            images.unflatten(0, (batch, shots)), masks.unflatten(0, (batch, shots))
        )
        logits = model.segment(_resize(query_image, side, "bilinear"), support, beta).logits
        total += torch.softmax(_resize(logits, size, "bilinear"), dim=1)
    return total / len(scales)


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=True)
