"""Soak: many queries against one cached support set; resident memory and latency drift.

``python -m dpnet_bench.soak --model out/ --queries 10000 --json soak.json --markdown soak.md``

After a warm-up, :func:`run_soak` sends ``queries`` query images (a fixed pool of sizes, so
the resize paths vary) through :meth:`Predictor.segment` against one support set encoded
once, and records the process's resident set size (RSS) at the start and the end and every
query's latency. It passes when RSS grows less than ``max_rss_growth_pct`` (5 %): a leak of
even a few KiB per query shows up over 10,000 queries. Latency drift compares the p50 of the
last ``window`` queries with the p50 of the first ``window``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Final

import numpy as np
import typer

from dpnet_bench.timing import (
    describe_environment,
    environment_lines,
    latency_stats,
    load_average,
    rss_bytes,
    timed_call,
)
from dpnet_runtime import Predictor
from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.errors import InputError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import check_report_outputs

__all__ = ["SoakOptions", "SoakResult", "app", "main", "run_soak", "to_markdown"]

_QUERY_SIZES: Final = ((240, 320), (321, 321), (480, 360), (200, 500))
_MIB: Final = float(1 << 20)


@dataclass(frozen=True)
class SoakOptions:
    """How to soak.

    Args:
        queries: number of timed queries after the warm-up.
        window: queries in the first / last latency window (and RSS is sampled that often).
        warmup: untimed queries before the start measurement (arenas, caches).
        shots: K support pairs encoded once.
        intra_op_threads: ONNX Runtime threads per operator.
        max_rss_growth_pct: pass threshold for (end - start) / start RSS.
        seed: query and support pixels.
    """

    queries: int = 10_000
    window: int = 1_000
    warmup: int = 50
    shots: int = 1
    intra_op_threads: int = 1
    max_rss_growth_pct: float = 5.0
    seed: int = 0


@dataclass(frozen=True)
class SoakResult:
    """What a soak measured; JSON keys are the field names (units in the names)."""

    model: str
    backend: str
    queries: int
    window: int
    shots: int
    intra_op_threads: int
    rss_before_warmup_mib: float
    rss_start_mib: float
    rss_end_mib: float
    rss_peak_mib: float
    rss_growth_pct: float
    rss_samples_mib: list[float]
    latency_first_p50_ms: float
    latency_last_p50_ms: float
    latency_drift_pct: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    seconds: float
    load_average_start: float
    load_average_end: float
    max_rss_growth_pct: float
    passed: bool
    command: str
    note: str
    environment: dict[str, str]


def run_soak(
    model: str | os.PathLike[str],
    options: SoakOptions | None = None,
    progress: Callable[[int], None] | None = None,
    command: str = "",
    note: str = "",
) -> SoakResult:
    """Run the soak of the module docstring on an export directory (ONNX Runtime, CPU).

    Args:
        model: export directory or graph file, as :meth:`Predictor.open` takes.
        options: see :class:`SoakOptions`.
        progress: called with the number of queries done, every ``window`` queries.
        command: the command line to record in the result.
        note: free text to record (how the model was made, what else ran).

    Returns:
        The measurements; ``passed`` is the RSS criterion.

    Raises:
        InputError: fewer queries than two windows, or a non-positive count.
        ModelFileError, BackendUnavailableError: see :meth:`Predictor.open`.
    """
    options = options or SoakOptions()
    if min(options.window, options.shots) < 1 or options.queries < 2 * options.window:
        raise InputError(
            f"--queries ({options.queries}) must be at least twice --window ({options.window}) "
            "and both, and --shots, positive"
        )
    rng = np.random.default_rng(options.seed)
    queries = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in _QUERY_SIZES]
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(options.shots)]
    mask = np.zeros((300, 400), np.uint8)
    mask[80:220, 100:300] = 1
    latencies_ns: list[int] = []
    started = time.perf_counter()
    with Predictor.open(model, intra_op_threads=options.intra_op_threads) as predictor:
        rss_before = rss_bytes() / _MIB
        support = predictor.encode_support(images, [mask] * options.shots)
        for index in range(options.warmup):
            predictor.segment(queries[index % len(queries)], support)
        rss_start = rss_bytes() / _MIB
        load_start = load_average()
        samples = [rss_start]
        for index in range(options.queries):
            query = partial(predictor.segment, queries[index % len(queries)], support)
            latencies_ns.append(timed_call(query)[1])
            if (index + 1) % options.window == 0:
                samples.append(rss_bytes() / _MIB)
                if progress is not None:
                    progress(index + 1)
        rss_end = rss_bytes() / _MIB
    overall = latency_stats(latencies_ns)
    first = latency_stats(latencies_ns[: options.window]).p50_ms
    last = latency_stats(latencies_ns[-options.window :]).p50_ms
    growth = 100.0 * (rss_end - rss_start) / rss_start
    return SoakResult(
        model=str(model),
        backend="ort",
        queries=options.queries,
        window=options.window,
        shots=options.shots,
        intra_op_threads=options.intra_op_threads,
        rss_before_warmup_mib=round(rss_before, 2),
        rss_start_mib=round(rss_start, 2),
        rss_end_mib=round(rss_end, 2),
        rss_peak_mib=round(max(samples), 2),
        rss_growth_pct=round(growth, 3),
        rss_samples_mib=[round(sample, 2) for sample in samples],
        latency_first_p50_ms=round(first, 3),
        latency_last_p50_ms=round(last, 3),
        latency_drift_pct=round(100.0 * (last - first) / first, 2),
        latency_p50_ms=round(overall.p50_ms, 3),
        latency_p99_ms=round(overall.p99_ms, 3),
        latency_max_ms=round(overall.max_ms, 3),
        seconds=round(time.perf_counter() - started, 1),
        load_average_start=load_start,
        load_average_end=load_average(),
        max_rss_growth_pct=options.max_rss_growth_pct,
        passed=growth < options.max_rss_growth_pct,
        command=command,
        note=note,
        environment=describe_environment(),
    )


def to_markdown(result: SoakResult) -> str:
    """A short Markdown report of a soak: command, host, memory and latency tables."""
    verdict = "passed" if result.passed else "FAILED"
    return "\n".join(
        [
            f"# Soak: {result.queries} queries against one cached support set ({verdict})",
            "",
            f"Command: `{result.command}`",
            "",
            *([result.note, ""] if result.note else []),
            f"Model: `{result.model}`, backend {result.backend}, K = {result.shots}, "
            f"{result.intra_op_threads} thread(s) per operator.",
            "",
            *environment_lines(result.environment, result.intra_op_threads),
            "",
            "| resident memory | MiB |",
            "|---|---|",
            f"| before warm-up | {result.rss_before_warmup_mib} |",
            f"| start (after warm-up) | {result.rss_start_mib} |",
            f"| end | {result.rss_end_mib} |",
            f"| peak of the samples (every {result.window} queries) | {result.rss_peak_mib} |",
            f"| growth start -> end | {result.rss_growth_pct} % "
            f"(limit {result.max_rss_growth_pct} %) |",
            "",
            "| latency | ms |",
            "|---|---|",
            f"| p50 of the first {result.window} | {result.latency_first_p50_ms} |",
            f"| p50 of the last {result.window} | {result.latency_last_p50_ms} |",
            f"| drift | {result.latency_drift_pct} % |",
            f"| p50 / p99 / max, all queries | {result.latency_p50_ms} / "
            f"{result.latency_p99_ms} / {result.latency_max_ms} |",
            "",
            f"Wall time {result.seconds} s. Load average (1 min) {result.load_average_start} at "
            f"the start, {result.load_average_end} at the end: latency drift on a busy host "
            "measures the host, not the runtime.",
            "",
        ]
    )


app = make_app(
    name="python -m dpnet_bench.soak",
    help="Soak the runtime: N queries against one cached support set; RSS growth and drift.",
)


@app.command()
def command(
    model: Annotated[Path, typer.Option(help="Export directory (dpnet-export onnx --out).")],
    queries: Annotated[int, typer.Option(help="Timed queries.")] = SoakOptions.queries,
    window: Annotated[int, typer.Option(help="Latency window.")] = SoakOptions.window,
    shots: Annotated[int, typer.Option(help="Support shots K.")] = SoakOptions.shots,
    threads: Annotated[int, typer.Option(help="Threads per operator.")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a Markdown report (.md).")] = None,
    note: Annotated[str, typer.Option(help="Text to record in the report.")] = "",
) -> None:
    """Run the soak; exit 3 when resident memory grows by 5 % or more."""
    check_report_outputs(json_path, markdown, {"--model": [model]})
    options = SoakOptions(queries=queries, window=window, shots=shots, intra_op_threads=threads)
    line = shlex.join(["python", "-m", "dpnet_bench.soak", *_without_note(sys.argv[1:])])
    result = run_soak(model, options, command=line, note=note)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(asdict(result), indent=2) + "\n")
    if markdown is not None:
        atomic_write_text(markdown, to_markdown(result))
    stdout_console.print(to_markdown(result), highlight=False)
    if not result.passed:
        raise typer.Exit(3)


def _without_note(args: list[str]) -> list[str]:
    # The note is printed on its own; repeating it inside the command line only adds noise.
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip or arg == "--note" or arg.startswith("--note="):
            skip = arg == "--note"
            continue
        kept.append(arg)
    return kept


def main() -> None:
    """Entry point of ``python -m dpnet_bench.soak``."""
    run_app(app)


if __name__ == "__main__":
    main()
