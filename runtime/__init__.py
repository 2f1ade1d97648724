"""dpnet_runtime: the torch-free DPNet runtime (numpy + ONNX Runtime, or TensorRT).

>>> from dpnet_runtime import Predictor  # doctest: +SKIP
>>> with Predictor.open("out/") as predictor:  # doctest: +SKIP
...     result = predictor.run_episode([image], [mask], query)
"""

from __future__ import annotations

from dpnet_runtime.backends.base import BaseRunner, open_runner
from dpnet_runtime.contract import TensorSpec
from dpnet_runtime.predictor import Predictor, SegmentResult, SupportSet

__version__ = "0.1.0"

__all__ = [
    "BaseRunner",
    "Predictor",
    "SegmentResult",
    "SupportSet",
    "TensorSpec",
    "__version__",
    "open_runner",
]
