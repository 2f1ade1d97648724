"""The targets a bench run reports, INT8 ones included, from hand-made rows: speed targets
(reported only) and the parity gates each row gets from its precision's row of the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpnet_bench.parity import ParityResult
from dpnet_bench.schema import BackendResult, BenchOptions
from dpnet_bench.targets import design_targets, parity_targets
from dpnet_bench.timing import LatencyStats
from dpnet_runtime.contract import ParityLimits
from dpnet_runtime.errors import InputError

INT8_LIMITS = ParityLimits(max_miou_delta_pt=1.0, min_pixel_agreement_pct=97.0)


def _stats(p50_ms: float) -> LatencyStats:
    return LatencyStats(3, p50_ms, p50_ms, p50_ms, p50_ms, p50_ms, p50_ms, 1e3 / p50_ms, ())


def _parity(delta: float, agreement: float, limits: ParityLimits = INT8_LIMITS) -> ParityResult:
    return ParityResult(delta, -delta / 2, 0.0, agreement, 90.0, limits, abs(delta) <= 1.0)


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
    assert (episode.measured, episode.limit, episode.met, episode.gate) == (0.35, 0.4, True, False)
    query = checks["ort_int8_vs_ort_query_ratio"]
    assert (query.measured, query.met) == (0.45, False)
    gates = {check.name: check for check in parity_targets(rows, BenchOptions(Path()).limits_for)}
    delta = gates["ort_int8_miou_delta_pt"]
    assert (delta.measured, delta.limit, delta.met, delta.gate) == (0.4, 1.0, True, True)
    agreement = gates["ort_int8_pixel_agreement_pct"]
    assert (agreement.measured, agreement.limit, agreement.met, agreement.gate) == (
        98.5,
        97.0,
        True,
        True,
    )


def test_targets_of_rows_that_did_not_run_are_not_measured() -> None:
    checks = {check.name: check for check in design_targets((), shots=5)}
    assert checks["ort_int8_vs_ort_episode_ratio"].met is None
    unavailable = BackendResult("trt-int8", "int8", "cuda", "unavailable", "no TensorRT")
    gates = {t.name: t for t in parity_targets((unavailable,), BenchOptions(Path()).limits_for)}
    assert gates["trt_int8_miou_delta_pt"].measured is None
    assert gates["trt_int8_miou_delta_pt"].limit == 1.0  # the int8 gate, with nothing measured


def test_each_precision_has_the_gates_of_its_rows_and_one_limit_per_metric() -> None:
    # docs/design.md#targets: one limit per precision and metric, the bench's gate and target alike.
    defaults = BenchOptions(checkpoint=Path("model.pt"))
    assert [defaults.limits_for(p).max_miou_delta_pt for p in ("fp32", "fp16", "int8")] == [
        0.05,
        0.3,
        1.0,
    ]
    assert defaults.limits_for("fp32").min_pixel_agreement_pct == 99.9
    assert defaults.limits_for("fp16").min_confidence_iou_pct == 98.0
    options = BenchOptions(checkpoint=Path("model.pt"), max_miou_delta={"int8": 1.5})
    assert options.limits_for("int8") == ParityLimits(1.5, 97.0)
    assert options.limits_for("fp32") == defaults.limits_for("fp32")
    relaxed = BenchOptions(checkpoint=Path("model.pt"), min_pixel_agreement={"int8": 0.0})
    assert relaxed.limits_for("int8") == ParityLimits(1.0, 0.0)
    with pytest.raises(InputError, match="unknown precision 'int4'"):
        options.limits_for("int4")


def test_a_missed_confidence_target_is_reported_never_a_gate() -> None:
    fp16 = ParityLimits(0.3, None, 98.0)
    row = BackendResult(
        "ort-fp16", "fp16", "cpu", "passed",
        parity=ParityResult(0.02, 0.01, 0.0, 99.99, 92.7, fp16, True),
    )  # fmt: skip
    checks = {t.name: t for t in parity_targets((row,), BenchOptions(Path()).limits_for)}
    confidence = checks["ort_fp16_confidence_iou_pct"]
    assert (confidence.met, confidence.gate) == (False, False)
    assert "ort_fp16_pixel_agreement_pct" not in checks  # FP16 has no pixel gate
    assert checks["ort_fp16_miou_delta_pt"].gate


def test_cached_query_limits_are_1_1_x_the_flop_share() -> None:
    # docs/design.md#targets: 1.1 x the query's FLOP share of the episode, 0.63 (1-shot) and
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
