"""Prototype Interaction Module (paper section 4.3, Eq. 4-8)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["InteractionOutput", "PrototypeInteraction", "z_score"]

_EPS = 1e-5


def z_score(x: Tensor) -> Tensor:
    """Eq. 4: ``(X - mean) / std`` over the channel dim of ``[B, C]`` (instead of BatchNorm)."""
    mean = x.mean(dim=1, keepdim=True)
    std = torch.sqrt(((x - mean) ** 2).mean(dim=1, keepdim=True) + _EPS)
    return (x - mean) / std


class InteractionOutput(NamedTuple):
    """PIM outputs: ``prototype``, ``pseudo_prototype`` ``[B, C]``; ``query_feats [B, C, h, w]``."""

    prototype: Tensor
    pseudo_prototype: Tensor
    query_feats: Tensor


class PrototypeInteraction(nn.Module):
    """``W = sigmoid(FC2(ReLU(FC1(z(conv1x1([P, P_q]))))))``; P, P_q and Fq scaled by ``1 + a W``.

    Args:
        channels: C.
        reduction: FC1 maps C to C // reduction.
        alpha_init: initial value of the learnable scale a (non-zero so that W gets gradients
            from the first step).
    """

    def __init__(self, channels: int, reduction: int, alpha_init: float) -> None:
        super().__init__()
        self.fuse = nn.Linear(2 * channels, channels)  # the 1x1 conv on the 1x1 prototype pair
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(
        self, prototype: Tensor, pseudo_prototype: Tensor, query_feats: Tensor
    ) -> InteractionOutput:
        """Args: ``prototype [B, C]``, ``pseudo_prototype [B, C]``, ``query_feats [B, C, h, w]``."""
        fused = z_score(self.fuse(torch.cat([prototype, pseudo_prototype], dim=1)))
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(fused))))  # Eq. 5
        scale = 1.0 + self.alpha * weights
        return InteractionOutput(
            prototype * scale,  # Eq. 6
            pseudo_prototype * scale,  # Eq. 7
            query_feats * scale[:, :, None, None],  # Eq. 8
        )
