"""Multi-Scale Fusion (paper section 4.4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiScaleFusion", "ceil_avg_pool2d"]


def _window_sizes(side: int, kernel: int) -> list[int]:
    """How many of the ``side`` positions each ceil-mode window of ``kernel`` covers."""
    return [min(kernel, side - start) for start in range(0, side, kernel)]


def ceil_avg_pool2d(feats: Tensor, kernel: int) -> Tensor:
    """``avg_pool2d(feats, kernel, kernel, ceil_mode=True, count_include_pad=False)``, exported
    without partial windows.

    A ceil-mode window that hangs over the border averages only the positions it covers, and
    ONNX runtimes disagree on that divisor (ONNX Runtime follows PyTorch, the ONNX reference
    implementation does not, TensorRT has had bugs there). So the map is zero-padded to a
    multiple of ``kernel`` (``Pad``), pooled with full windows only (``AveragePool``,
    ``ceil_mode=0``, divisor ``kernel**2``) and divided by a constant map of
    ``covered / kernel**2`` (static: h and w are fixed per export). For a power-of-two
    ``kernel`` both factors are exact in floating point, so the result is bit-identical to
    PyTorch's ceil-mode pooling (tested), and checkpoints keep their outputs.

    Args:
        feats: ``[B, C, h, w]``.
        kernel: window side and stride.

    Returns:
        ``[B, C, ceil(h / kernel), ceil(w / kernel)]``.
    """
    height, width = feats.shape[-2:]
    rows, cols = _window_sizes(int(height), kernel), _window_sizes(int(width), kernel)
    pad_rows, pad_cols = len(rows) * kernel - height, len(cols) * kernel - width
    if pad_rows or pad_cols:
        feats = F.pad(feats, (0, pad_cols, 0, pad_rows))
    pooled = F.avg_pool2d(feats, kernel, kernel)
    if not (pad_rows or pad_cols):
        return pooled
    covered = torch.tensor(rows, dtype=feats.dtype, device=feats.device)[:, None] * torch.tensor(
        cols, dtype=feats.dtype, device=feats.device
    )
    return pooled / (covered / (kernel * kernel))


class MultiScaleFusion(nn.Module):
    """Fuse a prototype with the query feature at scales 1, 1/2, 1/4 and sum the results.

    Each scale: average-pool ``Fq`` (kernel = stride = s, ceil mode, so 41 -> 21 -> 11, through
    :func:`ceil_avg_pool2d`), concat the broadcast prototype, its own 1x1 conv + ReLU, bilinear
    upsampling back to h x w.

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
            pooled = ceil_avg_pool2d(query_feats, scale) if scale > 1 else query_feats
            expanded = prototype[:, :, None, None].expand(-1, -1, *pooled.shape[-2:])
            out = branch(torch.cat([pooled, expanded], dim=1))
            if scale > 1:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
            fused = fused + out
        return fused
