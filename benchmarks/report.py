"""Render a :class:`~dpnet_bench.schema.BenchReport`: rich tables, JSON, CSV, markdown and a plot.

JSON and CSV share one flat row per backend (:func:`result_row`), keys snake_case with their
unit (``episode_latency_p50_ms``, ``miou_canet_pct``, ``miou_delta_canet_pt``); JSON adds the
run's options, environment, targets and every latency sample. Status legend as in
ultralytics' benchmark table: ✅ passed, ❎ cannot run here (reason given), ❌ failed while
running, ❗ parity failed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from rich.console import Group
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from dpnet_bench.schema import BackendResult, BenchReport, TargetCheck
from dpnet_bench.timing import LatencyStats, environment_lines
from dpnet_runtime.fileio import atomic_write_bytes, atomic_write_text
from dpnet_runtime.outputs import PLOT_FORMATS, output_format

__all__ = [
    "JSON_SCHEMA",
    "STAGES",
    "STATUS_ICONS",
    "json_ready",
    "latency_figure",
    "markdown_targets",
    "plot_latency",
    "progress_advancer",
    "render_gates",
    "render_markdown",
    "render_table",
    "render_targets",
    "report_to_dict",
    "result_row",
    "write_csv",
    "write_json",
]

JSON_SCHEMA: Final = "dpnet-bench/1"
STAGES: Final = ("episode", "support", "query")
STATUS_ICONS: Final = {
    "passed": "✅",
    "unavailable": "❎",
    "failed": "❌",
    "parity failed": "❗",
}
_STAT_FIELDS: Final = ("mean", "p50", "p90", "p99", "min", "max")

Scalar = str | float | int | None


def result_row(result: BackendResult) -> dict[str, Scalar]:
    """One flat row: the CSV line and the JSON ``results`` entry (without samples)."""
    row: dict[str, Scalar] = {
        "backend": result.backend,
        "precision": result.precision,
        "device": result.device,
        "status": result.status,
        "reason": result.reason,
        "artifact_mb": result.artifact_mb,
        "peak_memory_mb": result.peak_memory_mb,
        "gpu_peak_memory_mb": result.gpu_peak_memory_mb,
    }
    for stage in STAGES:
        stats: LatencyStats | None = getattr(result, stage)
        row[f"{stage}_count"] = None if stats is None else stats.count
        for name in _STAT_FIELDS:
            row[f"{stage}_latency_{name}_ms"] = (
                None if stats is None else getattr(stats, f"{name}_ms")
            )
        row[f"{stage}_per_s"] = None if stats is None else stats.per_second
    accuracy, parity = result.accuracy, result.parity
    row["miou_canet_pct"] = None if accuracy is None else accuracy.miou_canet
    row["miou_pfenet_pct"] = None if accuracy is None else accuracy.miou_pfenet
    row["fbiou_pct"] = None if accuracy is None else accuracy.fbiou
    row["miou_delta_canet_pt"] = None if parity is None else parity.miou_delta_canet_pt
    row["miou_delta_pfenet_pt"] = None if parity is None else parity.miou_delta_pfenet_pt
    row["fbiou_delta_pt"] = None if parity is None else parity.fbiou_delta_pt
    row["pixel_agreement_pct"] = None if parity is None else parity.pixel_agreement_pct
    row["confidence_iou_pct"] = None if parity is None else parity.confidence_iou_pct
    row["max_miou_delta_pt"] = None if parity is None else parity.max_miou_delta_pt
    row["split_agreement_pct"] = result.split_agreement_pct
    return row


def report_to_dict(report: BenchReport) -> dict[str, Any]:
    """The whole report as JSON-ready data (NaN becomes ``null``)."""
    options = dataclasses.asdict(report.options)
    results = []
    for result in report.results:
        samples = {
            stage: list(stats.samples_ms)
            for stage in STAGES
            if (stats := getattr(result, stage)) is not None
        }
        results.append({**result_row(result), "latency_samples_ms": samples})
    data = {
        "schema": JSON_SCHEMA,
        "model": report.model,
        "input_size": report.input_size,
        "threads": report.threads,
        "parity_failed": report.parity_failed,
        "options": options,
        "environment": report.environment,
        "results": results,
        "targets": [dataclasses.asdict(target) for target in report.targets],
    }
    return json_ready(data)


def write_json(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write :func:`report_to_dict` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(report_to_dict(report), indent=2) + "\n")


def write_csv(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write one :func:`result_row` per backend as CSV (header first), atomically."""
    rows = [result_row(result) for result in report.results]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def render_table(report: BenchReport) -> Group:
    """Four narrow rich tables (latency; cached support and memory; accuracy; parity) plus one
    line per problem.

    Each table fits an 80-column terminal, and a row's identity (backend, status) is never
    cut: those columns keep their full width and numbers fold rather than being truncated.
    """
    title = (
        f"{report.model} {report.input_size}x{report.input_size}, {report.options.shots}-shot, "
        f"{report.options.episodes} episodes, {report.threads} threads"
    )
    results = report.results
    names = [result.backend for result in results]
    statuses = [f"{STATUS_ICONS.get(r.status, '?')} {r.status}" for r in results]
    latency = _table(f"dpnet-bench latency (ms): {title}", names, ("status", statuses),
                     "episode p50", "p90", "p99", "episodes /s")  # fmt: skip
    cached = _table("cached support set (ms) and memory (MB)", names, None,
                    "support p50", "query p50", "query / episode", "size", "peak")  # fmt: skip
    accuracy = _table("accuracy (%)", names, None, "mIoU canet", "mIoU pfenet", "FB-IoU")
    parity = _table("parity with torch fp32", names, None, "ΔmIoU pt", "pixels agree %",
                    "C' IoU %", "split = episode %")  # fmt: skip
    problems = []
    for result, status in zip(results, statuses, strict=True):
        episode, query, parity_result = result.episode, result.query, result.parity
        latency.add_row(
            result.backend,
            status,
            _fmt(episode and episode.p50_ms),
            _fmt(episode and episode.p90_ms),
            _fmt(episode and episode.p99_ms),
            _fmt(episode and episode.per_second, 2),
        )
        cached.add_row(
            result.backend,
            _fmt(result.support and result.support.p50_ms),
            _fmt(query and query.p50_ms),
            _fmt(query.p50_ms / episode.p50_ms if query and episode else None, 2),
            _fmt(result.artifact_mb, 1),
            _fmt(result.peak_memory_mb, 0),
        )
        if result.accuracy is not None:
            accuracy.add_row(
                result.backend,
                _fmt(result.accuracy.miou_canet, 2),
                _fmt(result.accuracy.miou_pfenet, 2),
                _fmt(result.accuracy.fbiou, 2),
            )
            parity.add_row(
                result.backend,
                _fmt(parity_result and parity_result.miou_delta_pt, 3),
                _fmt(parity_result and parity_result.pixel_agreement_pct, 3),
                _fmt(parity_result and parity_result.confidence_iou_pct, 2),
                _fmt(result.split_agreement_pct, 3),
            )
        if result.reason:
            problems.append(Text(f"{status.split()[0]} {result.backend}: {result.reason}"))
    return Group(latency, cached, accuracy, parity, *problems)


def _table(
    title: str,
    names: list[str],
    label: tuple[str, list[str]] | None,
    *numbers: str,
) -> Table:
    """A table whose identity columns (``backend``, and ``label`` when given) never shrink."""
    table = Table(title=title)
    table.add_column("backend", no_wrap=True, min_width=max(map(len, names), default=7))
    if label is not None:
        header, values = label
        # Emoji take two cells.
        table.add_column(header, no_wrap=True, min_width=max(len(v) + 1 for v in values))
    for column in numbers:
        table.add_column(column, justify="right", overflow="fold")
    return table


def render_targets(targets: tuple[TargetCheck, ...]) -> Table:
    """The design targets (docs/design.md#targets) measured in this run: value, limit, met or
    not, where a gate that fails says so (exit 3) and a reported target that is missed says it
    changes nothing (target names are never cut; the explanation wraps)."""
    table = Table(title="targets: ❌ a parity gate failed (exit 3), ➖ a reported target missed")
    width = max((len(target.name) for target in targets), default=6)
    table.add_column("target", no_wrap=True, min_width=width)
    for column in ("measured", "limit", "met"):
        table.add_column(column, no_wrap=True)
    table.add_column("how", overflow="fold")
    for target in targets:
        met = _met(target, yes="✅ yes", no="❌ gate", missed="➖ missed")
        table.add_row(target.name, _fmt(target.measured, 3), _bound(target), met, target.detail)
    return table


def render_gates(targets: tuple[TargetCheck, ...], failed: bool, failed_exit: int) -> str:
    """A report's last line: every parity gate measured with its limit and verdict, and the
    exit code they give (``failed_exit`` when ``failed``, else 0)."""
    measured = [t for t in targets if t.gate and t.met is not None]
    code = failed_exit if failed else 0
    if not measured:
        return f"parity gates: none measured (they compare rows with torch) -> exit {code}"
    verdict = "failed" if failed else "passed"
    listed = ", ".join(
        f"{t.name} {_fmt(t.measured, 3)} {_bound(t)} {'ok' if t.met else 'FAILED'}"
        for t in measured
    )
    return f"parity gates {verdict}: {listed} -> exit {code}"


def _bound(target: TargetCheck) -> str:
    return f"{'<=' if target.at_most else '>='} {target.limit:g}"


def _kind(target: TargetCheck) -> str:
    return "gate" if target.gate else "reported"


def _met(target: TargetCheck, *, yes: str, no: str, missed: str) -> str:
    # A missed reported target reads differently from a failed gate: it changes no exit code.
    if target.met is None:
        return "n/a"
    if target.met:
        return yes
    return no if target.gate else missed


def render_markdown(report: BenchReport, command: str) -> str:
    """A results file: command, hardware, versions, the backend table and the targets."""
    env = report.environment
    lines = [
        f"# dpnet-bench: {report.model} {report.input_size}x{report.input_size}, "
        f"{report.options.shots}-shot",
        "",
        f"Command: `{command}`",
        "",
        *environment_lines(env, report.threads),
        "",
        "| backend | status | size MB | episode p50 ms | p90 ms | p99 ms | episodes/s "
        "| support p50 ms | query p50 ms | peak MB | mIoU canet | mIoU pfenet | FB-IoU "
        "| ΔmIoU pt | pixel agreement % | C' IoU % |",
        "|---" * 16 + "|",
    ]
    for result in report.results:
        row = result_row(result)
        status = f"{STATUS_ICONS.get(result.status, '?')} {result.status}"
        if result.reason:
            status += f": {result.reason}"
        parity = result.parity
        cells = [
            result.backend,
            status.replace("|", "/"),
            _fmt(result.artifact_mb, 1),
            _fmt(row["episode_latency_p50_ms"]),
            _fmt(row["episode_latency_p90_ms"]),
            _fmt(row["episode_latency_p99_ms"]),
            _fmt(row["episode_per_s"], 2),
            _fmt(row["support_latency_p50_ms"]),
            _fmt(row["query_latency_p50_ms"]),
            _fmt(result.peak_memory_mb, 0),
            _fmt(row["miou_canet_pct"], 2),
            _fmt(row["miou_pfenet_pct"], 2),
            _fmt(row["fbiou_pct"], 2),
            _fmt(parity and parity.miou_delta_pt, 3),
            _fmt(row["pixel_agreement_pct"], 3),
            _fmt(row["confidence_iou_pct"], 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *markdown_targets(report.targets)]
    return "\n".join(lines) + "\n"


def markdown_targets(targets: tuple[TargetCheck, ...]) -> list[str]:
    """The targets as markdown table lines: name (how), measured, limit, kind, met."""
    lines = ["| target | measured | limit | kind | met |", "|---|---|---|---|---|"]
    for target in targets:
        met = _met(target, yes="yes", no="**no**", missed="no (reported only)")
        lines.append(
            f"| {target.name} ({target.detail}) | {_fmt(target.measured, 3)} | {_bound(target)} "
            f"| {_kind(target)} | {met} |"
        )
    return lines


def progress_advancer(progress: Progress) -> Callable[[str, int, int], None]:
    """A ``(row name, done, total)`` progress callback: one bar per row, made on first use."""
    tasks: dict[str, TaskID] = {}

    def advance(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total, status="")
        progress.update(tasks[name], completed=done)

    return advance


def plot_latency(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """Write :func:`latency_figure` to ``path`` in the format of its extension.

    Raises:
        OptionError: ``path`` is not a .png, .svg or .pdf file.
        BackendUnavailableError: matplotlib is not installed (``pip install 'dpnet[train]'``).
    """
    image_format = output_format(path, "--plot", PLOT_FORMATS, "png")
    figure = latency_figure(report)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def latency_figure(report: BenchReport) -> Any:
    """Box plots of the latency samples per backend (whole episode, cached-support query), with
    a legend saying what the box, the lines and the marks are: a matplotlib ``Figure``.

    Raises:
        BackendUnavailableError: matplotlib is not installed (``pip install 'dpnet[train]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError as exc:
        from dpnet_runtime.errors import BackendUnavailableError
        from dpnet_runtime.extras import missing_package_message

        raise BackendUnavailableError(missing_package_message("matplotlib", "--plot")) from exc
    figure = Figure(figsize=(11, 5))  # not pyplot's: nothing global to close
    axes = figure.subplots(1, 2, squeeze=False)
    parts: dict[str, Any] = {}
    for axis, stage, title in zip(
        axes[0], ("episode", "query"), ("whole episode", "query on cached support"), strict=True
    ):
        measured = [(r.backend, getattr(r, stage)) for r in report.results]
        present = [(name, stats.samples_ms) for name, stats in measured if stats is not None]
        if present:
            parts = axis.boxplot([samples for _, samples in present], whis=(1, 99), showmeans=True)
            axis.set_xticks(range(1, len(present) + 1), [name for name, _ in present])
        axis.set_title(title)
        axis.set_ylabel("latency (ms)")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(
        f"{report.model} {report.input_size}x{report.input_size}, {report.options.shots}-shot, "
        f"{report.threads} threads"
    )
    shown = [(parts[key][0], label) for key, label in _BOX_LEGEND if parts.get(key)]
    if shown:
        handles, labels = zip(*shown, strict=True)
        figure.legend(handles, labels, loc="lower center", ncol=len(shown), frameon=False)
    figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend under the plots
    return figure


# What each part of a box plot (matplotlib's boxplot() keys) shows, in legend order.
_BOX_LEGEND: Final = (
    ("medians", "median (p50)"),
    ("means", "mean"),
    ("boxes", "box: p25 to p75"),
    ("whiskers", "whiskers: p1 to p99"),
    ("fliers", "runs beyond p1 / p99"),
)


def _fmt(value: object, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, int | float) else str(value)


def json_ready(value: Any) -> Any:
    """Data as JSON takes it: NaN and infinities as ``None``, paths as strings."""
    # JSON has no NaN: an undefined mIoU (no episode of a class) is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value
