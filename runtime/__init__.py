"""dpnet_runtime: the torch-free DPNet runtime (numpy + ONNX Runtime, or TensorRT)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
