"""The targets of docs/design.md#targets that a ``dpnet-bench`` run measures.

Two kinds, each with one limit:

- the parity gates of every row (:func:`parity_targets`), read off ``contract.FORMATS`` per
  precision (``ParityLimits``): the mIoU delta and, where set, the pixel agreement. A gate
  that fails makes ``dpnet-bench`` exit 3; the confident-set IoU is a reported target.
- the speed targets (:func:`design_targets`), reported only: they never change the exit code.

Ratios use the median (p50) of runs interleaved on the same episodes, robust to the noise of a
shared machine. A target whose subjects did not run is reported with ``met = None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from dpnet_bench.schema import REFERENCE, BackendResult, TargetCheck
from dpnet_bench.timing import LatencyStats
from dpnet_runtime.contract import ParityLimits

__all__ = ["design_targets", "parity_targets", "target_check"]

_AGREEMENT = "mask pixels equal to torch's"
_QUERY_FLOP_SHARE: Final = {1: 0.63, 5: 0.325}
"""The cached-support query's share of the full episode's FLOPs at K = 1 and 5 (paper config,
docs/design.md#targets: trunk 32.8, decoder 15.7, MSF 1.2, CCM 5.8 GFLOP per shot)."""
_QUERY_OVERHEAD: Final = 1.1  # the query may take 1.1 x its FLOP share of the episode time
_DELTA = "max |mIoU delta| to torch over both protocols"


def design_targets(results: Sequence[BackendResult], shots: int) -> tuple[TargetCheck, ...]:
    """The speed targets this run can measure, in report order (reported only, never gates).

    Args:
        results: the bench rows.
        shots: the episodes' K (the cached-query targets depend on it).
    """
    rows = {result.backend: result for result in results}
    empty = BackendResult("", "", "", "")
    ort, int8, reference = (rows.get(name, empty) for name in ("ort", "ort-int8", REFERENCE))
    checks = [
        target_check("ort_vs_torch_episode_ratio", _p50_ratio(ort.episode, reference.episode),
                     0.6, "ort episode p50 / torch episode p50, same episodes and threads"),
        target_check("ort_int8_vs_ort_episode_ratio", _p50_ratio(int8.episode, ort.episode),
                     0.4, "ort-int8 episode p50 / ort (FP32) episode p50"),
        target_check("ort_int8_vs_ort_query_ratio", _p50_ratio(int8.query, ort.query), 0.4,
                     "ort-int8 cached-support query p50 / ort (FP32) one"),
    ]  # fmt: skip
    share = _QUERY_FLOP_SHARE.get(shots)
    if share is not None:
        ratio = _p50_ratio(ort.query, ort.episode)
        detail = (
            f"ort cached-support query p50 / full {shots}-shot episode p50; limit "
            f"{_QUERY_OVERHEAD:g} x its FLOP share {share:g}"
        )
        limit = round(_QUERY_OVERHEAD * share, 4)
        checks.insert(1, target_check("ort_query_vs_episode_ratio", ratio, limit, detail))
    return tuple(checks)


def parity_targets(
    results: Sequence[BackendResult], limits_for: Callable[[str], ParityLimits]
) -> tuple[TargetCheck, ...]:
    """The parity gates and reported parity targets of every row but the reference.

    Args:
        results: the bench rows (a row that did not run has its targets unmeasured).
        limits_for: precision -> its limits (``BenchOptions.limits_for``).
    """
    checks: list[TargetCheck] = []
    for row in results:
        if row.backend == REFERENCE:
            continue
        key, parity = row.backend.replace("-", "_"), row.parity
        limits = parity.limits if parity is not None else limits_for(row.precision)
        checks.append(target_check(f"{key}_miou_delta_pt", parity and parity.miou_delta_pt,
                                   limits.max_miou_delta_pt, _DELTA, gate=True))  # fmt: skip
        if limits.min_pixel_agreement_pct is not None:
            agreement = parity and parity.pixel_agreement_pct
            checks.append(target_check(f"{key}_pixel_agreement_pct", agreement,
                                       limits.min_pixel_agreement_pct, _AGREEMENT, at_most=False,
                                       gate=True))  # fmt: skip
        if limits.min_confidence_iou_pct is not None:
            iou = parity and parity.confidence_iou_pct
            checks.append(target_check(f"{key}_confidence_iou_pct", iou,
                                       limits.min_confidence_iou_pct,
                                       "pooled IoU of the C' sets vs torch",
                                       at_most=False))  # fmt: skip
    return tuple(checks)


def target_check(
    name: str,
    value: float | None,
    limit: float,
    detail: str,
    *,
    at_most: bool = True,
    gate: bool = False,
) -> TargetCheck:
    """A target measured as ``value`` against ``limit`` (``None``: not measured, ``met`` too);
    ``gate``: a miss makes the command exit 3."""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return TargetCheck(name, value, limit, at_most, met, detail, gate)


def _p50_ratio(top: LatencyStats | None, bottom: LatencyStats | None) -> float | None:
    return top.p50_ms / bottom.p50_ms if top is not None and bottom is not None else None
