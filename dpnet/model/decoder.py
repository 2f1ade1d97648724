"""The ASPP decoder shared by the main and the auxiliary branch (CANet / DeepLab style).

No BatchNorm anywhere in the head: BN statistics drift between few-shot episodes (paper 4.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ASPP", "Decoder", "ResidualBlock"]


class ASPP(nn.Module):
    """Image pooling, 1x1 and dilated 3x3 branches, concatenated and projected back to C."""

    def __init__(self, channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True)),
                *(
                    nn.Sequential(
                        nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate),
                        nn.ReLU(inplace=True),
                    )
                    for rate in rates
                ),
            ]
        )
        self.image_pool = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(
            nn.Conv2d(channels * (len(rates) + 2), channels, 1), nn.ReLU(inplace=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w] -> [B, C, h, w]``."""
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True)).expand_as(x)
        outputs = [branch(x) for branch in self.branches] + [pooled]
        return self.project(torch.cat(outputs, dim=1))


class ResidualBlock(nn.Module):
    """CANet's refinement block: ``x + conv3x3(ReLU(conv3x3(ReLU(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w] -> [B, C, h, w]``."""
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class Decoder(nn.Module):
    """1x1 fuse -> ASPP -> residual refinement -> 1x1 classifier (2 classes) -> upsample.

    Args:
        in_channels: channels of the fused feature (2C main branch, C auxiliary branch).
        channels: C.
        rates: ASPP dilation rates.
        refine_blocks: residual refinement blocks after the ASPP.
    """

    def __init__(
        self, in_channels: int, channels: int, rates: tuple[int, ...], refine_blocks: int
    ) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(in_channels, channels, 1), nn.ReLU(inplace=True))
        self.aspp = ASPP(channels, rates)
        self.refine = nn.Sequential(*(ResidualBlock(channels) for _ in range(refine_blocks)))
        self.classifier = nn.Conv2d(channels, 2, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, in_channels, h, w]`` -> logits ``[B, 2, H, W]`` (bilinear, align_corners)."""
        logits = self.classifier(torch.relu(self.refine(self.aspp(self.fuse(x)))))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
