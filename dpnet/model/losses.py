"""The three losses of Eq. 11: ``L = L_seg + l1 L_aux + l2 L_dis``."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dpnet_runtime.contract import IGNORE_LABEL

__all__ = ["DPNetLosses", "discriminator_loss", "dpnet_losses", "segmentation_loss"]


class DPNetLosses(NamedTuple):
    """Scalar loss terms; ``total`` is the weighted sum that is optimised."""

    total: Tensor
    seg: Tensor
    aux: Tensor
    dis: Tensor


def segmentation_loss(logits: Tensor, query_mask: Tensor) -> Tensor:
    """Eq. 9: cross-entropy of ``logits [B, 2, H, W]`` vs ``query_mask [B, H, W]`` (255 ignored)."""
    return F.cross_entropy(logits, query_mask.long(), ignore_index=IGNORE_LABEL)


def discriminator_loss(scores: Tensor, confidence: Tensor, query_mask: Tensor) -> Tensor:
    """Eq. 10: BCE of the discriminator on the cycle-consistent set C.

    .. note:: Eq. 10 sums over C'; supervising only C' lets the discriminator reject every
       location and learn nothing, so the loss runs over C (the candidates it filters).

    Args:
        scores: ``[B, K, h, w]`` discriminator outputs h in (0, 1).
        confidence: ``[B, K, h, w]`` the set C, float 0/1.
        query_mask: ``[B, H, W]`` query labels 0/1/255.

    Returns:
        Mean BCE over the labelled positions of C; 0 when C is empty.
    """
    labels = F.interpolate(query_mask[:, None].float(), size=scores.shape[-2:], mode="nearest")
    labels = labels.expand_as(scores)
    weights = confidence * (labels != IGNORE_LABEL)
    target = (labels == 1).to(scores.dtype)
    per_position = F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)


def dpnet_losses(
    logits: Tensor,
    aux_logits: Tensor,
    scores: Tensor | None,
    confidence: Tensor | None,
    query_mask: Tensor,
    *,
    aux_weight: float,
    dis_weight: float,
) -> DPNetLosses:
    """Eq. 11. ``scores``/``confidence`` are ``None`` for variants without a discriminator."""
    seg = segmentation_loss(logits, query_mask)
    aux = segmentation_loss(aux_logits, query_mask)
    dis = torch.zeros((), device=logits.device)
    if scores is not None and confidence is not None:
        dis = discriminator_loss(scores, confidence, query_mask)
    return DPNetLosses(seg + aux_weight * aux + dis_weight * dis, seg, aux, dis)
