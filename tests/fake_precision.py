"""A FAKE precision, ``fp8``, added to ``contract.FORMATS`` the way a real one would be: one row
and its converter, nothing else. Its converter copies the FP32 graph unchanged (the point is the
plumbing, not FP8 arithmetic); the exporter stamps ``precision = fp8`` on the copies.

In a subprocess: ``python -c "import fake_precision; fake_precision.install(); ..."`` with
``tests`` on ``PYTHONPATH``; in-process: ``monkeypatch.setitem(contract.FORMATS, *FAKE_ITEM)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from dpnet_runtime.contract import FORMATS, Format, ParityLimits

__all__ = ["FAKE_LIMITS", "FAKE_ROW", "fake_fp8_graphs", "install"]

FAKE_LIMITS = ParityLimits(max_miou_delta_pt=0.7, min_pixel_agreement_pct=95.5)
FAKE_ROW = Format(
    "ort", "fp8", "cpu", "onnx", None, "FAKE fp8 copies *_fp8.onnx (the FP32 graphs, unchanged)",
    FAKE_LIMITS, converter="fake_precision:fake_fp8_graphs",
)  # fmt: skip


def fake_fp8_graphs(fp32: onnx.ModelProto, request: object) -> Mapping[str, onnx.ModelProto]:
    """The converter of the fake row: the FP32 graph itself, for every backend asked."""
    return {backend: fp32 for backend in getattr(request, "backends", ())}


def install() -> None:
    """Add the fake row to the table of this process (before any CLI module is imported)."""
    FORMATS[FAKE_ROW.name] = FAKE_ROW
