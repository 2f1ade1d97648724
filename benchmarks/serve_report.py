"""Render a :class:`~dpnet_bench.serve_load.ServeBenchReport`: rich table, JSON and markdown.

One flat row per path and concurrency level (:func:`serve_row`), keys snake_case with units
(``latency_p50_ms``, ``throughput_per_s``); JSON adds the options, environment, targets and
every latency sample, like ``dpnet-bench``'s own report.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Final

from rich.console import Group
from rich.table import Table

from dpnet_bench.report import json_ready, markdown_targets, render_targets
from dpnet_bench.serve_load import IN_PROCESS, LoadResult, ServeBenchReport
from dpnet_bench.timing import environment_lines
from dpnet_runtime.fileio import atomic_write_text

__all__ = [
    "SERVE_JSON_SCHEMA",
    "cpu_table",
    "render_serve_markdown",
    "render_serve_table",
    "serve_report_to_dict",
    "serve_row",
    "write_serve_json",
]

SERVE_JSON_SCHEMA: Final = "dpnet-bench-serve/1"
_COLUMNS: Final = (
    "path", "clients", "requests", "errors", "wrong masks", "p50 ms", "p90 ms", "p99 ms",
    "requests/s", "query batches (size x count)", "support runs",
)  # fmt: skip

Scalar = str | float | int | None


def serve_row(result: LoadResult) -> dict[str, Scalar]:
    """One flat row (the JSON ``results`` entry without samples)."""
    latency = result.latency
    row: dict[str, Scalar] = {
        "path": result.path,
        "concurrency": result.concurrency,
        "requests": result.requests,
        "errors": result.errors,
        "mask_mismatches": result.mismatches,
        "wall_s": result.wall_s,
        "throughput_per_s": result.throughput_per_s,
    }
    for name in ("mean", "p50", "p90", "p99", "min", "max"):
        row[f"latency_{name}_ms"] = None if latency is None else getattr(latency, f"{name}_ms")
    row["batch_sizes"] = _batches(result)
    row["support_graph_runs"] = result.support_graph_runs
    row["first_error"] = result.first_error
    return row


def serve_report_to_dict(report: ServeBenchReport) -> dict[str, Any]:
    """The whole report as JSON-ready data."""
    results = [
        {
            **serve_row(result),
            "batch_size_counts": {str(size): n for size, n in result.batch_sizes.items()},
            "latency_samples_ms": [] if result.latency is None else list(result.latency.samples_ms),
            "cpu_ms_per_request": result.cpu_ms_per_request,
        }
        for result in report.results
    ]
    return {
        "schema": SERVE_JSON_SCHEMA,
        "input_size": report.input_size,
        "threads": report.threads,
        "check_failed": report.check_failed,
        "options": json_ready(dataclasses.asdict(report.options)),
        "environment": report.environment,
        "results": results,
        "targets": [dataclasses.asdict(target) for target in report.targets],
        "idle_cpu_ms_per_s": report.idle_cpu_ms_per_s,
    }


def write_serve_json(report: ServeBenchReport, path: str | os.PathLike[str]) -> None:
    """Write :func:`serve_report_to_dict` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(serve_report_to_dict(report), indent=2) + "\n")


def render_serve_table(report: ServeBenchReport) -> Group:
    """The load table, the targets, and the first error of any level that had errors."""
    options = report.options
    table = Table(
        title=f"dpnet-bench serve: {options.url}, {report.input_size}x{report.input_size}, "
        f"{options.shots}-shot, {options.requests} requests per level"
    )
    for index, column in enumerate(_COLUMNS):
        table.add_column(column, justify="left" if index == 0 else "right")
    for result in report.results:
        table.add_row(*_cells(result))
    problems = [
        f"❌ {result.path} c={result.concurrency}: {result.first_error}"
        for result in report.results
        if result.first_error
    ]
    cpu = cpu_table(report)
    if cpu:
        cpu_view = Table(title="CPU ms per request, by process")
        for index, column in enumerate(cpu[0]):
            cpu_view.add_column(column, justify="left" if index == 0 else "right")
        for row in cpu[1:]:
            cpu_view.add_row(*row)
        return Group(table, cpu_view, render_targets(report.targets), *problems)
    return Group(table, render_targets(report.targets), *problems)


def cpu_table(report: ServeBenchReport) -> list[list[str]]:
    """CPU milliseconds per request by process: a header row, then one row per process role
    (most expensive first), the total, and the total minus the in-process call's CPU (what
    serving adds); the first column is each process's CPU while idle, in ms per second. Empty
    when the run did not measure CPU (no ``--server-pid``)."""
    measured = [result for result in report.results if result.cpu_ms_per_request]
    if not any(result.path != IN_PROCESS for result in measured):
        return []
    idle = report.idle_cpu_ms_per_s
    roles = sorted(
        {role for result in measured for role in result.cpu_ms_per_request},
        key=lambda role: -max(result.cpu_ms_per_request.get(role, 0.0) for result in measured),
    )
    header = [
        "process", "idle ms/s",
        *(f"{result.path} c={result.concurrency} ms/request" for result in measured),
    ]  # fmt: skip
    rows = [
        [
            role,
            f"{idle[role]:.1f}" if role in idle else "-",
            *(f"{result.cpu_ms_per_request.get(role, 0.0):.1f}" for result in measured),
        ]
        for role in roles
    ]
    totals = [sum(result.cpu_ms_per_request.values()) for result in measured]
    paths = [result.path for result in measured]
    reference = totals[paths.index(IN_PROCESS)] if IN_PROCESS in paths else None
    rows.append(["total", f"{sum(idle.values()):.1f}", *(f"{total:.1f}" for total in totals)])
    if reference is not None:
        rows.append(["total - in-process", "", *(f"{total - reference:+.1f}" for total in totals)])
    return [header, *rows]


def render_serve_markdown(report: ServeBenchReport, command: str) -> str:
    """A results file: command, hardware, versions, the load table and the targets."""
    options = report.options
    lines = [
        f"# dpnet-bench serve: {report.input_size}x{report.input_size}, {options.shots}-shot",
        "",
        f"Command: `{command}`",
        "",
        *environment_lines(report.environment, report.threads),
        "",
        f"Server: {options.url}"
        + (f", started as `{options.server_command}`" if options.server_command else "")
        + f". In-process row: `Predictor.segment` on the same images with {report.threads} "
        "threads. Every mask was compared with the in-process mask of the same image.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|---" * len(_COLUMNS) + "|",
        *("| " + " | ".join(_cells(result)) + " |" for result in report.results),
        "",
        *_markdown_cpu(report),
        *markdown_targets(report.targets),
    ]
    return "\n".join(lines) + "\n"


def _markdown_cpu(report: ServeBenchReport) -> list[str]:
    table = cpu_table(report)
    if not table:
        return []
    return [
        "CPU time by process (user + system, psutil): idle, in ms per second, measured before "
        "the first level with no request; then per request, over each level's wall time (idle "
        "time included: at a lower request rate it weighs more per request). In-process: the "
        "benchmark's own process.",
        "",
        "| " + " | ".join(table[0]) + " |",
        "|---" * len(table[0]) + "|",
        *("| " + " | ".join(row) + " |" for row in table[1:]),
        "",
    ]


def _cells(result: LoadResult) -> list[str]:
    latency = result.latency
    return [
        result.path,
        str(result.concurrency),
        str(result.requests),
        str(result.errors),
        str(result.mismatches),
        *(
            "-" if latency is None else f"{getattr(latency, name):.1f}"
            for name in ("p50_ms", "p90_ms", "p99_ms")
        ),
        f"{result.throughput_per_s:.2f}",
        _batches(result) or "-",
        str(result.support_graph_runs),
    ]


def _batches(result: LoadResult) -> str:
    return ", ".join(f"{size}x{count}" for size, count in result.batch_sizes.items())
