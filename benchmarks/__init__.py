"""dpnet_bench: latency of every backend side by side and mIoU parity against PyTorch."""

from __future__ import annotations

__all__: list[str] = []
