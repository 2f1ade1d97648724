"""Latency statistics, warm-up and RSS sampling on known inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from dpnet_bench.timing import (
    RssSampler,
    describe_environment,
    latency_stats,
    rss_bytes,
    timed_call,
    warm_up,
)


def test_latency_stats_on_1_to_100_ms() -> None:
    samples_ns = [ms * 1_000_000 for ms in range(1, 101)]
    stats = latency_stats(samples_ns)
    assert stats.count == 100
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5)  # linear interpolation between 50 and 51
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert (stats.min_ms, stats.max_ms) == (1.0, 100.0)
    assert stats.per_second == pytest.approx(1000 / 50.5)
    assert stats.samples_ms[:3] == (1.0, 2.0, 3.0)


def test_latency_stats_single_sample_and_order_independence() -> None:
    one = latency_stats([2_500_000])
    assert one.p50_ms == one.p99_ms == one.min_ms == one.max_ms == 2.5
    shuffled = latency_stats([3_000_000, 1_000_000, 2_000_000])
    assert (shuffled.p50_ms, shuffled.min_ms, shuffled.max_ms) == (2.0, 1.0, 3.0)
    assert shuffled.samples_ms == (3.0, 1.0, 2.0)  # call order is kept for re-analysis


def test_latency_stats_rejects_no_sample() -> None:
    with pytest.raises(ValueError, match="at least one"):
        latency_stats([])


def test_warm_up_respects_min_calls_and_timed_call_returns_result() -> None:
    calls: list[int] = []
    assert warm_up(lambda: calls.append(1), seconds=0.0, min_calls=3) == 3
    assert len(calls) == 3
    result, elapsed = timed_call(lambda: 42)
    assert result == 42
    assert elapsed >= 0


def test_rss_sampler_background_thread_catches_a_freed_block() -> None:
    """The peak comes from the sampling thread: the block is gone before ``__exit__`` samples."""
    assert rss_bytes() > 0
    block_bytes = 64 << 20
    with RssSampler(period_s=0.005) as sampler:
        block = np.ones(block_bytes, dtype=np.uint8)  # touched, so it is resident
        # Wait (bounded) for a sample taken after the fill; a fixed sleep is flaky on a loaded CI.
        deadline = time.monotonic() + 10.0
        while sampler.peak_delta_bytes < block_bytes * 3 // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
    assert sampler.peak_delta_bytes >= block_bytes * 3 // 4


def test_environment_names_hardware_and_versions() -> None:
    environment = describe_environment()
    assert environment["usable_cpus"].isdigit()
    assert "numpy_version" in environment
    assert "onnxruntime_version" in environment
    float(environment["load_average_1m"])
