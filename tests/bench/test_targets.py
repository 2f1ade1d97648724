"""The targets a bench run reports, INT8 ones included, from hand-made rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpnet_bench.parity import ParityResult
from dpnet_bench.schema import BackendResult, BenchOptions
from dpnet_bench.targets import design_targets
from dpnet_bench.timing import LatencyStats


def _stats(p50_ms: float) -> LatencyStats:
    return LatencyStats(3, p50_ms, p50_ms, p50_ms, p50_ms, p50_ms, p50_ms, 1e3 / p50_ms, ())


def _parity(delta: float, agreement: float) -> ParityResult:
    return ParityResult(delta, -delta / 2, 0.0, agreement, 90.0, 1.0, abs(delta) <= 1.0)


def test_int8_targets_compare_with_ort_fp32() -> None:
    rows = (
        BackendResult("ort", "fp32", "cpu", "passed", episode=_stats(300.0), query=_stats(200.0)),
        BackendResult(
            "ort-int8", "int8", "cpu", "passed",
            episode=_stats(105.0), query=_stats(90.0), parity=_parity(-0.4, 98.5),
        ),
    )  # fmt: skip
    checks = {check.name: check for check in design_targets(rows, shots=1)}
    episode = checks["ort_int8_vs_ort_episode_ratio"]
    assert (episode.measured, episode.limit, episode.met) == (0.35, 0.4, True)
    query = checks["ort_int8_vs_ort_query_ratio"]
    assert (query.measured, query.met) == (0.45, False)
    assert (checks["ort_int8_miou_delta_pt"].measured, checks["ort_int8_miou_delta_pt"].met) == (
        0.4,
        True,
    )
    agreement = checks["ort_int8_pixel_agreement_pct"]
    assert (agreement.measured, agreement.limit, agreement.met) == (98.5, 97.0, True)


def test_int8_targets_without_the_rows_are_not_measured() -> None:
    checks = {check.name: check for check in design_targets((), shots=5)}
    assert checks["ort_int8_vs_ort_episode_ratio"].met is None
    assert checks["ort_int8_miou_delta_pt"].measured is None


def test_each_precision_has_its_gate() -> None:
    options = BenchOptions(
        checkpoint=Path("model.pt"),
        max_miou_delta=0.1,
        max_miou_delta_fp16=0.3,
        max_miou_delta_int8=1.5,
    )
    assert [options.max_miou_delta_for(p) for p in ("fp32", "fp16", "int8")] == [0.1, 0.3, 1.5]
    assert BenchOptions(checkpoint=Path("model.pt")).max_miou_delta_int8 == 1.0


def test_cached_query_limits_are_1_1_x_the_flop_share() -> None:
    # DESIGN.md section 9: 1.1 x the query's FLOP share of the episode, 0.63 (1-shot) and
    # 0.325 (5-shot); other K have no target.
    rows = (
        BackendResult("ort", "fp32", "cpu", "passed", episode=_stats(200.0), query=_stats(130.0)),
    )
    limits = {}
    for shots in (1, 5, 3):
        checks = {check.name: check for check in design_targets(rows, shots=shots)}
        limits[shots] = checks.get("ort_query_vs_episode_ratio")
    assert limits[1] is not None and limits[1].limit == pytest.approx(0.693)
    assert (limits[1].measured, limits[1].met) == (0.65, True)
    assert limits[5] is not None and limits[5].limit == pytest.approx(0.3575)
    assert limits[5].met is False
    assert limits[3] is None
