"""dpnet: DPNet (Dual Prototype Network) few-shot semantic segmentation in PyTorch."""

from __future__ import annotations

from dpnet_runtime import __version__

__all__ = ["__version__"]
