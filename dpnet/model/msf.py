"""Multi-Scale Fusion (paper section 4.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleFusion"]


class MultiScaleFusion(nn.Module):
    """Fuse a prototype with the query feature at scales 1, 1/2, 1/4 and sum the results.

    Each scale: average-pool ``Fq`` (kernel = stride = s, ceil mode, so 41 -> 21 -> 11), concat the
    broadcast prototype, its own 1x1 conv + ReLU, bilinear upsampling back to h x w.

    Args:
        channels: C.
        scales: pooling factors; ``(1,)`` disables the multi-scale part (Table 3 ablation).
    """

    def __init__(self, channels: int, scales: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True))
            for _ in scales
        )

    def forward(self, query_feats: Tensor, prototype: Tensor) -> Tensor:
        """Args: ``query_feats [B, C, h, w]``, ``prototype [B, C]``. Returns ``[B, C, h, w]``."""
        size = query_feats.shape[-2:]
        fused = torch.zeros_like(query_feats)
        for scale, branch in zip(self.scales, self.branches, strict=True):
            pooled = query_feats
            if scale > 1:
                pooled = F.avg_pool2d(
                    query_feats, scale, scale, ceil_mode=True, count_include_pad=False
                )
            expanded = prototype[:, :, None, None].expand(-1, -1, *pooled.shape[-2:])
            out = branch(torch.cat([pooled, expanded], dim=1))
            if scale > 1:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
            fused = fused + out
        return fused
