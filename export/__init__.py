"""dpnet_export: DPNet checkpoint -> ONNX (FP32 and mixed FP16) -> TensorRT engine."""

from __future__ import annotations

__all__: list[str] = []
