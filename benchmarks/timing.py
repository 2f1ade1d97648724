"""Warm-up, timed calls, latency statistics and peak-memory sampling.

Latency statistics follow ultralytics' ``ProfileModels`` in spirit (warm up by time, then
time every call) but report tail percentiles, not only mean and std: a deployment cares about
p90/p99. Percentiles use numpy's default linear interpolation.

Peak memory is the resident set size (RSS) sampled every few milliseconds by a background
thread, minus the RSS before the subject was opened: it sees ONNX Runtime's and PyTorch's
native allocations, which ``tracemalloc`` cannot. Allocator caches kept from an earlier
subject can make later deltas an underestimate.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar

import numpy as np

__all__ = [
    "LatencyStats",
    "RssSampler",
    "describe_environment",
    "environment_lines",
    "latency_stats",
    "load_average",
    "rss_bytes",
    "timed_call",
    "warm_up",
]

T = TypeVar("T")

_PACKAGES: Final = (
    "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "ray", "dpnet",
)  # fmt: skip
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
_SAMPLE_PERIOD_S: Final = 0.01


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one stage's timed calls, in milliseconds.

    Attributes:
        count: number of timed calls.
        mean_ms, p50_ms, p90_ms, p99_ms, min_ms, max_ms: latency statistics.
        per_second: calls per second at the mean latency (episodes/s for a full episode).
        samples_ms: every timed call, in call order (for plots and re-analysis).
    """

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    per_second: float
    samples_ms: tuple[float, ...]


def latency_stats(samples_ns: Sequence[int]) -> LatencyStats:
    """Statistics of call durations.

    Args:
        samples_ns: durations in nanoseconds, at least one.

    Returns:
        The summary in milliseconds.

    Raises:
        ValueError: no samples (a bug in the caller: every stage runs at least once).

    >>> stats = latency_stats([1_000_000, 2_000_000, 3_000_000])
    >>> stats.mean_ms, stats.p50_ms, stats.per_second
    (2.0, 2.0, 500.0)
    """
    if len(samples_ns) == 0:
        raise ValueError("latency_stats needs at least one sample")
    values = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(values, (50, 90, 99))
    mean = float(values.mean())
    return LatencyStats(
        count=int(values.size),
        mean_ms=mean,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        per_second=1000.0 / mean if mean > 0 else float("inf"),
        samples_ms=tuple(float(v) for v in values),
    )


def timed_call(function: Callable[[], T]) -> tuple[T, int]:
    """Call ``function`` once; return its result and the wall time in nanoseconds."""
    start = time.perf_counter_ns()
    result = function()
    return result, time.perf_counter_ns() - start


def warm_up(function: Callable[[], object], seconds: float, min_calls: int = 1) -> int:
    """Call ``function`` until ``seconds`` have passed and at least ``min_calls`` were made.

    The first calls of a session pay for lazy allocation, kernel selection and cold caches;
    they are not what a running service sees.

    Returns:
        The number of calls made.
    """
    deadline = time.perf_counter() + seconds
    calls = 0
    while calls < min_calls or time.perf_counter() < deadline:
        function()
        calls += 1
    return calls


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE_BYTES
    except OSError:
        return 0


class RssSampler:
    """Samples the RSS in a background thread; ``peak_delta_bytes`` is the peak above the start.

    >>> with RssSampler() as sampler:
    ...     block = bytearray(64 << 20)
    >>> sampler.peak_delta_bytes >= 0
    True
    """

    def __init__(self, period_s: float = _SAMPLE_PERIOD_S) -> None:
        self.period_s = period_s
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_delta_bytes(self) -> int:
        """Peak RSS seen minus the RSS at start (never negative)."""
        return max(0, self.peak_bytes - self.start_bytes)

    def __enter__(self) -> Self:
        self.start_bytes = self.peak_bytes = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.peak_bytes = max(self.peak_bytes, rss_bytes())


def describe_environment() -> dict[str, str]:
    """Hardware and library versions a timing depends on (for results files).

    Returns:
        ``cpu_model``, ``cpu_count``, ``usable_cpus``, ``platform``, ``python``,
        ``load_average_1m`` and one
        ``<package>_version`` per installed package of interest (absent ones are left out).
    """
    described = {
        "cpu_model": _cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "usable_cpus": str(len(os.sched_getaffinity(0))),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m": f"{load_average():.2f}",
    }
    for package in _PACKAGES:
        try:
            described[f"{package.replace('-', '_')}_version"] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return described


def load_average() -> float:
    """The 1-minute load average, rounded to 0.01 (NaN where the OS has none).

    Timings on a shared machine mean little without the load they were taken under.
    """
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_lines(env: dict[str, str], threads: int | None) -> list[str]:
    """The hardware and versions paragraphs of a markdown results file."""
    versions = ", ".join(
        f"{key.removesuffix('_version')} {value}"
        for key, value in env.items()
        if key.endswith("_version") or key == "python"
    )
    return [
        f"Hardware: {env.get('cpu_model', '?')}, {env.get('usable_cpus', '?')} usable cores "
        f"({threads} threads used); {env.get('platform', '')}; 1-min load average "
        f"{env.get('load_average_1m', '?')} when the run ended",
        "",
        f"Versions: {versions}",
    ]
