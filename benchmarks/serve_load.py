"""``dpnet-bench serve``: load a running dpnet-serve and compare it with an in-process Predictor.

Against a server on this machine (``--url``, default ``http://127.0.0.1:8000``) running the
export given as ``--model``, :func:`run_serve_bench`

1. opens the same export in-process and times :meth:`Predictor.segment` on the query images,
   one after the other (the reference row);
2. registers one class, warms up, then for each concurrency level sends a bounded number of
   ``/segment`` requests from that many threads (one HTTP connection each), timing every
   request and checking every mask against the in-process mask for the same image;
3. reads the server's counters before and after each level: the query batch sizes it ran,
   and how often the support graph ran (never, for a registered class);
4. deletes the class.

Every request is bounded by ``timeout_s`` and the run by ``requests x levels``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from dpnet.data import build_dataset
from dpnet_bench.schema import TargetCheck
from dpnet_bench.serve_cpu import CpuSampler
from dpnet_bench.targets import target_check
from dpnet_bench.timing import LatencyStats, describe_environment, latency_stats
from dpnet_runtime import Predictor
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_serve import Client, ServeOptions
from dpnet_serve.options import read_token

__all__ = [
    "C1_P50_RATIO_LIMIT",
    "IN_PROCESS",
    "THROUGHPUT_RATIO_LIMIT",
    "LoadResult",
    "ServeBenchOptions",
    "ServeBenchReport",
    "run_serve_bench",
]

IN_PROCESS: Final = "in-process"
# Serving overhead targets (issue 21): at concurrency 1 the served p50 within 10 % of the
# in-process one; at the busiest level, served requests/s at least 95 % of in-process serial.
C1_P50_RATIO_LIMIT: Final = 1.10
THROUGHPUT_RATIO_LIMIT: Final = 0.95
_QUERY_POOL: Final = 16  # distinct query images, cycled
_SETTLE_S: Final = 10.0  # how long to wait for the server's counters to catch up

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ServeBenchOptions:
    """What ``dpnet-bench serve`` runs; its flags are kebab-case twins of these fields.

    Args:
        artifacts: the export directory the server runs (for the in-process row).
        url: the server's base URL.
        requests: timed requests per concurrency level (and timed in-process calls).
        concurrency: client threads of each level.
        shots: K support pairs of the registered class.
        warmup: untimed requests before the first level (and in-process calls before timing).
        threads: in-process ONNX Runtime threads; ``None``: the usable cores.
        seed: synthetic episode seed (the support pairs and query images).
        wait_s: how long to wait for the server to be ready.
        timeout_s: the most one request may take.
        class_name: the name the benchmark registers (replacing one of that name).
        server_command: how the server was started, recorded in the report.
        server_pid: PID of the ``dpnet-serve`` process on this machine: CPU time per request
            is then reported by process (:mod:`dpnet_bench.serve_cpu`), and the CPU each
            process spends idle, measured for ``idle_s`` before the first level.
        idle_s: how long the idle CPU is measured (``server_pid`` only).
        token_file: file holding the server's bearer token (``dpnet-serve --token-file``);
            ``None``: ``$DPNET_SERVE_TOKEN``, or no token.
    """

    artifacts: Path
    url: str = "http://127.0.0.1:8000"
    requests: int = 64
    concurrency: tuple[int, ...] = (1, 4, 16)
    shots: int = 1
    warmup: int = 8
    threads: int | None = None
    seed: int = 0
    wait_s: float = 0.0
    timeout_s: float = 120.0
    class_name: str = "dpnet-bench"
    server_command: str = ""
    server_pid: int | None = None
    idle_s: float = 10.0
    token_file: Path | None = None

    def __post_init__(self) -> None:
        if self.requests < 1 or self.warmup < 0 or self.shots < 1:
            raise InputError("requests and shots must be >= 1, warmup >= 0")
        if not self.concurrency or min(self.concurrency) < 1:
            raise InputError(f"concurrency levels must be >= 1, got {self.concurrency}")


@dataclass(frozen=True)
class LoadResult:
    """One row: the in-process reference or one concurrency level against the server.

    Attributes:
        path: ``in-process`` or ``serve``.
        concurrency: client threads (1 for in-process).
        requests: requests sent (calls made).
        errors: requests that failed; ``first_error`` says how the first one did.
        mismatches: masks that differ from the in-process mask of the same image.
        wall_s: wall time of the level.
        throughput_per_s: successful requests per second of wall time.
        latency: per-request latency of the successful ones (``None`` if none succeeded).
        batch_sizes: query-graph batch size -> batches the server ran during the level.
        support_graph_runs: support-graph runs on the server during the level.
        cpu_ms_per_request: CPU milliseconds per successful request, by process role
            (``--server-pid``; in-process: this process); empty when not measured.
    """

    path: str
    concurrency: int
    requests: int
    errors: int
    mismatches: int
    wall_s: float
    throughput_per_s: float
    latency: LatencyStats | None
    batch_sizes: dict[int, int]
    support_graph_runs: int
    first_error: str = ""
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeBenchReport:
    """Everything one ``dpnet-bench serve`` run measured."""

    options: ServeBenchOptions
    input_size: int
    threads: int
    environment: dict[str, str]
    results: tuple[LoadResult, ...]
    targets: tuple[TargetCheck, ...]
    idle_cpu_ms_per_s: dict[str, float] = field(default_factory=dict)

    @property
    def check_failed(self) -> bool:
        """True when a gate failed: a request failed, a mask differed or the support graph
        re-ran (exit 3); the latency and throughput targets are reported, never enforced."""
        return any(target.gate and target.met is False for target in self.targets)


def run_serve_bench(
    options: ServeBenchOptions, progress: Progress | None = None
) -> ServeBenchReport:
    """Run the in-process reference and every concurrency level (see the module docstring).

    Args:
        options: what to run.
        progress: called with (row name, done, total) after every request.

    Raises:
        DpnetError: the server is not ready within ``wait_s``, or refuses the registration.
        ModelFileError: ``artifacts`` is not an export directory.
    """
    report = progress or (lambda name, done, total: None)
    threads = options.threads or len(os.sched_getaffinity(0))
    sampler = None if options.server_pid is None else CpuSampler(options.server_pid)
    with _client(options) as client:
        _wait_ready(client, options)
        with Predictor.open(options.artifacts, intra_op_threads=threads) as predictor:
            images, masks, queries = _episode_images(options, predictor.info.input_size)
            reference, expected = _in_process(predictor, images, masks, queries, options, report)
            input_size = predictor.info.input_size
        client.register(options.class_name, images, masks, replace=True)
        try:
            for index in range(options.warmup):
                client.segment(options.class_name, queries[index % len(queries)])
            idle = {} if sampler is None else _idle_rates(sampler, options.idle_s)
            levels = [
                _load_level(client, level, queries, expected, options, report, sampler)
                for level in options.concurrency
            ]
        finally:
            client.delete(options.class_name)
    results = (reference, *levels)
    return ServeBenchReport(
        options=options,
        input_size=input_size,
        threads=threads,
        environment=describe_environment(),
        results=results,
        targets=_targets(reference, levels),
        idle_cpu_ms_per_s=idle,
    )


def _idle_rates(sampler: CpuSampler, seconds: float) -> dict[str, float]:
    # What each process spends with no request at all: Ray's and Serve's own loops.
    sampler.delta()
    time.sleep(seconds)
    return {role: spent * 1e3 / seconds for role, spent in sampler.delta().items()}


def _client(options: ServeBenchOptions) -> Client:
    token = read_token(ServeOptions(model=options.artifacts, token_file=options.token_file))
    return Client(options.url, token=token, timeout_s=options.timeout_s)


def _wait_ready(client: Client, options: ServeBenchOptions) -> None:
    deadline = time.monotonic() + options.wait_s
    while not client.ready():
        if time.monotonic() >= deadline:
            raise DpnetError(
                f"no ready dpnet-serve at {options.url}; start one with dpnet-serve --model "
                f"{options.artifacts} (or give --wait-s for one that is starting)"
            )
        time.sleep(0.5)


def _episode_images(
    options: ServeBenchOptions, size: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=options.shots, seed=options.seed,
        episodes=_QUERY_POOL, image_size=size,
    )  # fmt: skip
    episodes = [dataset[index] for index in range(len(dataset))]
    # The dataset's 0/1/255 masks, as they are: the Client reads them as Predictor does.
    masks = list(episodes[0].support_masks)
    return list(episodes[0].support_images), masks, [e.query_image for e in episodes]


def _in_process(
    predictor: Predictor,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    queries: list[np.ndarray],
    options: ServeBenchOptions,
    report: Progress,
) -> tuple[LoadResult, list[np.ndarray]]:
    support = predictor.encode_support(images, masks)
    expected = [predictor.segment(query, support).mask for query in queries]
    for index in range(options.warmup):
        predictor.segment(queries[index % len(queries)], support)
    samples = []
    cpu_start = time.process_time()
    start = time.perf_counter_ns()
    for index in range(options.requests):
        began = time.perf_counter_ns()
        predictor.segment(queries[index % len(queries)], support)
        samples.append(time.perf_counter_ns() - began)
        report(IN_PROCESS, index + 1, options.requests)
    wall_s = (time.perf_counter_ns() - start) / 1e9
    cpu_ms = (time.process_time() - cpu_start) * 1e3 / options.requests
    row = LoadResult(
        path=IN_PROCESS, concurrency=1, requests=options.requests, errors=0, mismatches=0,
        wall_s=wall_s, throughput_per_s=options.requests / wall_s,
        latency=latency_stats(samples), batch_sizes={}, support_graph_runs=0,
        cpu_ms_per_request={IN_PROCESS: cpu_ms},
    )  # fmt: skip
    return row, expected


def _load_level(
    client: Client,
    concurrency: int,
    queries: list[np.ndarray],
    expected: list[np.ndarray],
    options: ServeBenchOptions,
    report: Progress,
    sampler: CpuSampler | None,
) -> LoadResult:
    name = f"serve c={concurrency}"
    before = client.stats()
    if sampler is not None:
        sampler.delta()
    indices = iter(range(options.requests))
    lock = threading.Lock()
    samples: list[int] = []
    failures: list[str] = []
    mismatches = [0]

    def worker() -> None:
        with _client(options) as own:
            while True:
                with lock:
                    index = next(indices, None)
                if index is None:
                    return
                query = index % len(queries)
                began = time.perf_counter_ns()
                try:
                    mask = own.segment(options.class_name, queries[query])
                except DpnetError as exc:
                    outcome: str | int = str(exc)
                else:
                    outcome = time.perf_counter_ns() - began
                with lock:
                    if isinstance(outcome, str):
                        failures.append(outcome)
                    else:
                        samples.append(outcome)
                        mismatches[0] += not np.array_equal(mask, expected[query])
                    report(name, len(samples) + len(failures), options.requests)

    start = time.perf_counter_ns()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall_s = (time.perf_counter_ns() - start) / 1e9
    cpu = {} if sampler is None else _per_request(sampler.delta(), len(samples))
    after = _settled_stats(client, before, len(samples))
    return LoadResult(
        path="serve",
        concurrency=concurrency,
        requests=options.requests,
        errors=len(failures),
        mismatches=mismatches[0],
        wall_s=wall_s,
        throughput_per_s=len(samples) / wall_s,
        latency=latency_stats(samples) if samples else None,
        batch_sizes=_batch_delta(before, after),
        support_graph_runs=after["support_graph_runs"] - before["support_graph_runs"],
        first_error=failures[0] if failures else "",
        cpu_ms_per_request=cpu,
    )


def _per_request(spent_s: dict[str, float], answered: int) -> dict[str, float]:
    # The load generator's threads share this process with nothing else during a level.
    return {role: seconds * 1e3 / max(answered, 1) for role, seconds in spent_s.items()}


def _settled_stats(client: Client, before: dict[str, Any], answered: int) -> dict[str, Any]:
    # Replicas report their counts a moment after they answer.
    deadline = time.monotonic() + _SETTLE_S
    stats = client.stats()
    while stats["queries"] - before["queries"] < answered and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = client.stats()
    return stats


def _batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[int, int]:
    old = before["batch_sizes"]
    delta = {int(size): count - old.get(size, 0) for size, count in after["batch_sizes"].items()}
    return {size: count for size, count in sorted(delta.items()) if count}


def _targets(reference: LoadResult, levels: list[LoadResult]) -> tuple[TargetCheck, ...]:
    single = next((level for level in levels if level.concurrency == 1), None)
    busiest = max(levels, key=lambda level: level.concurrency)
    ratio = (
        single.latency.p50_ms / reference.latency.p50_ms
        if single and single.latency and reference.latency
        else None
    )
    speedup = busiest.throughput_per_s / reference.throughput_per_s
    busiest_rate = f"serve requests/s at concurrency {busiest.concurrency}"
    return (
        target_check("serve_c1_p50_vs_in_process_ratio", ratio, C1_P50_RATIO_LIMIT,
                     "serve segment p50 at concurrency 1 / in-process Predictor.segment p50"),
        target_check(f"serve_c{busiest.concurrency}_throughput_vs_in_process_ratio", speedup,
                     THROUGHPUT_RATIO_LIMIT, f"{busiest_rate} / in-process serial calls/s",
                     at_most=False),
        target_check("serve_errors", float(sum(level.errors for level in levels)), 0.0,
                     "failed requests over every level", gate=True),
        target_check("serve_mask_mismatches", float(sum(level.mismatches for level in levels)),
                     0.0, "masks unlike the in-process mask of the same image", gate=True),
        target_check("support_graph_runs_during_queries",
                     float(sum(level.support_graph_runs for level in levels)), 0.0,
                     "support-graph runs on the server while only a registered class was queried",
                     gate=True),
    )  # fmt: skip
