"""The DESIGN.md section 9 targets (and issue 12's INT8 ones) that a ``dpnet-bench`` run measures.

Ratios use the median (p50) of runs interleaved on the same episodes, robust to the noise of a
shared machine. A target whose subjects did not run is reported with ``met = None``; targets
never change the exit code (only the parity gates do).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from dpnet_bench.schema import REFERENCE, BackendResult, TargetCheck
from dpnet_bench.timing import LatencyStats

__all__ = ["design_targets"]

_AGREEMENT = "mask pixels equal to torch's"
_QUERY_FLOP_SHARE: Final = {1: 0.63, 5: 0.325}
"""The cached-support query's share of the full episode's FLOPs at K = 1 and 5 (paper config,
DESIGN.md section 9: trunk 32.8, decoder 15.7, MSF 1.2, CCM 5.8 GFLOP per shot)."""
_QUERY_OVERHEAD: Final = 1.1  # the query may take 1.1 x its FLOP share of the episode time
_DELTA = "max |mIoU delta| to torch over both protocols"


def design_targets(results: Sequence[BackendResult], shots: int) -> tuple[TargetCheck, ...]:
    """Every target this run can measure, in report order.

    Args:
        results: the bench rows.
        shots: the episodes' K (the cached-query targets depend on it).
    """
    rows = {result.backend: result for result in results}
    empty = BackendResult("", "", "", "")
    ort, fp16, int8, reference = (
        rows.get(name, empty) for name in ("ort", "ort-fp16", "ort-int8", REFERENCE)
    )
    checks = [
        _check("ort_vs_torch_episode_ratio", _p50_ratio(ort.episode, reference.episode), 0.6,
               "ort episode p50 / torch episode p50, same episodes and threads"),
        _check("ort_miou_delta_pt", ort.parity and ort.parity.miou_delta_pt, 0.05, _DELTA),
        _check("ort_pixel_agreement_pct", ort.parity and ort.parity.pixel_agreement_pct, 99.9,
               _AGREEMENT, at_most=False),
        _check("ort_fp16_miou_delta_pt", fp16.parity and fp16.parity.miou_delta_pt, 0.3, _DELTA),
        _check("ort_fp16_confidence_iou_pct", fp16.parity and fp16.parity.confidence_iou_pct,
               98.0, "pooled IoU of the C' sets vs torch", at_most=False),
        _check("ort_int8_vs_ort_episode_ratio", _p50_ratio(int8.episode, ort.episode), 0.4,
               "ort-int8 episode p50 / ort (FP32) episode p50"),
        _check("ort_int8_vs_ort_query_ratio", _p50_ratio(int8.query, ort.query), 0.4,
               "ort-int8 cached-support query p50 / ort (FP32) one"),
        _check("ort_int8_miou_delta_pt", int8.parity and int8.parity.miou_delta_pt, 1.0, _DELTA),
        _check("ort_int8_pixel_agreement_pct", int8.parity and int8.parity.pixel_agreement_pct,
               97.0, _AGREEMENT, at_most=False),
    ]  # fmt: skip
    share = _QUERY_FLOP_SHARE.get(shots)
    if share is not None:
        ratio = _p50_ratio(ort.query, ort.episode)
        detail = (
            f"ort cached-support query p50 / full {shots}-shot episode p50; limit "
            f"{_QUERY_OVERHEAD:g} x its FLOP share {share:g}"
        )
        limit = round(_QUERY_OVERHEAD * share, 4)
        checks.insert(1, _check("ort_query_vs_episode_ratio", ratio, limit, detail))
    return tuple(checks)


def _check(
    name: str, value: float | None, limit: float, detail: str, *, at_most: bool = True
) -> TargetCheck:
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return TargetCheck(name, value, limit, at_most, met, detail)


def _p50_ratio(top: LatencyStats | None, bottom: LatencyStats | None) -> float | None:
    return top.p50_ms / bottom.p50_ms if top is not None and bottom is not None else None
