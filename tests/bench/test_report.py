"""JSON / CSV schema, tables, markdown and plot of a hand-built BenchReport."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from dpnet_bench.parity import AccuracyResult, ParityResult
from dpnet_bench.report import (
    JSON_SCHEMA,
    latency_figure,
    plot_latency,
    render_gates,
    render_markdown,
    render_table,
    render_targets,
    result_row,
    write_csv,
    write_json,
)
from dpnet_bench.schema import BackendResult, BenchOptions, BenchReport, TargetCheck
from dpnet_bench.timing import LatencyStats
from dpnet_runtime.contract import ParityLimits
from dpnet_runtime.errors import OptionError

_STAGE_KEYS = [
    f"{stage}_{suffix}"
    for stage in ("episode", "support", "query")
    for suffix in (
        "count", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
        "latency_min_ms", "latency_max_ms", "per_s",
    )
]  # fmt: skip
EXPECTED_ROW_KEYS = [
    "backend", "precision", "device", "status", "reason", "artifact_mb", "peak_memory_mb",
    "gpu_peak_memory_mb", *_STAGE_KEYS, "miou_canet_pct", "miou_pfenet_pct", "fbiou_pct",
    "miou_delta_canet_pt", "miou_delta_pfenet_pt", "fbiou_delta_pt", "pixel_agreement_pct",
    "confidence_iou_pct", "max_miou_delta_pt", "split_agreement_pct",
]  # fmt: skip


# Hand-made statistics: every field a different number, so a swapped column shows.
STATS = LatencyStats(
    count=3, mean_ms=17.25, p50_ms=12.0, p90_ms=26.5, p99_ms=29.75, min_ms=10.0, max_ms=30.0,
    per_second=57.97, samples_ms=(10.0, 12.0, 30.0),
)  # fmt: skip
_NO_STAGE = {key: None for key in _STAGE_KEYS}
EPISODE_ONLY = {
    **_NO_STAGE,
    "episode_count": 3, "episode_latency_mean_ms": 17.25, "episode_latency_p50_ms": 12.0,
    "episode_latency_p90_ms": 26.5, "episode_latency_p99_ms": 29.75,
    "episode_latency_min_ms": 10.0, "episode_latency_max_ms": 30.0, "episode_per_s": 57.97,
}  # fmt: skip
ORT_ROW = {
    "backend": "ort", "precision": "fp32", "device": "cpu", "status": "parity failed",
    "reason": "mIoU delta 0.500 pt > 0.1 pt", "artifact_mb": 20.0, "peak_memory_mb": None,
    "gpu_peak_memory_mb": None, **EPISODE_ONLY, "miou_canet_pct": 40.5,
    "miou_pfenet_pct": 50.0, "fbiou_pct": 60.0, "miou_delta_canet_pt": 0.5,
    "miou_delta_pfenet_pt": -0.25, "fbiou_delta_pt": 0.125, "pixel_agreement_pct": 99.0,
    "confidence_iou_pct": 97.5, "max_miou_delta_pt": 0.1, "split_agreement_pct": None,
}  # fmt: skip


@pytest.fixture
def report() -> BenchReport:
    torch_row = BackendResult(
        "torch", "fp32", "cpu", "passed", artifact_mb=10.0, episode=STATS, support=STATS,
        query=STATS, peak_memory_mb=50.0, accuracy=AccuracyResult(40.0, float("nan"), 60.0),
        split_agreement_pct=100.0,
    )  # fmt: skip
    ort_row = BackendResult(
        "ort", "fp32", "cpu", "parity failed", "mIoU delta 0.500 pt > 0.1 pt", artifact_mb=20.0,
        episode=STATS, accuracy=AccuracyResult(40.5, 50.0, 60.0),
        parity=ParityResult(0.5, -0.25, 0.125, 99.0, 97.5, ParityLimits(0.1), False),
    )  # fmt: skip
    trt_row = BackendResult("trt", "fp16", "cuda", "unavailable", "TensorRT is not installed")
    return BenchReport(
        options=BenchOptions(checkpoint=Path("model.pt"), backends=("torch", "ort", "trt")),
        model="tiny",
        input_size=129,
        threads=2,
        environment={"cpu_model": "test cpu", "usable_cpus": "2", "numpy_version": "2"},
        results=(torch_row, ort_row, trt_row),
        targets=(
            TargetCheck("ort_miou_delta_pt", 0.5, 0.1, True, False, "max delta", gate=True),
            TargetCheck("ort_vs_torch_episode_ratio", 0.8, 0.6, True, False, "p50 ratio"),
        ),
    )


def test_result_row_keys_are_snake_case_with_units(report: BenchReport) -> None:
    for result in report.results:
        assert list(result_row(result)) == EXPECTED_ROW_KEYS
    assert result_row(report.results[1]) == ORT_ROW
    row = result_row(report.results[0])
    assert row["query_latency_p99_ms"] == 29.75 and row["support_per_s"] == 57.97
    assert row["query_count"] == 3
    assert row["miou_delta_canet_pt"] is None  # torch is the reference
    assert math.isnan(row["miou_pfenet_pct"])  # type: ignore[arg-type]
    trt = result_row(report.results[2])
    assert trt["reason"] == "TensorRT is not installed" and trt["miou_canet_pct"] is None


def test_json_schema_round_trip(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    write_json(report, path)
    data = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert data["schema"] == JSON_SCHEMA
    assert data["parity_failed"] is True
    assert data["options"]["checkpoint"] == "model.pt"
    assert [r["backend"] for r in data["results"]] == ["torch", "ort", "trt"]
    assert (data["model"], data["input_size"], data["threads"]) == ("tiny", 129, 2)
    assert data["environment"]["cpu_model"] == "test cpu"
    torch_entry, ort_entry, trt_entry = data["results"]
    assert list(torch_entry) == [*EXPECTED_ROW_KEYS, "latency_samples_ms"]
    assert torch_entry["miou_pfenet_pct"] is None  # NaN written as null
    samples = [10.0, 12.0, 30.0]
    assert torch_entry["latency_samples_ms"] == {"episode": samples, "support": samples,
                                                 "query": samples}  # fmt: skip
    assert ort_entry == {**ORT_ROW, "latency_samples_ms": {"episode": samples}}
    assert trt_entry["reason"] == "TensorRT is not installed"
    assert trt_entry["latency_samples_ms"] == {}
    assert data["targets"][0] == {
        "name": "ort_miou_delta_pt", "measured": 0.5, "limit": 0.1, "at_most": True,
        "met": False, "detail": "max delta", "gate": True,
    }  # fmt: skip
    assert data["targets"][1]["gate"] is False


def test_csv_has_one_row_per_backend(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "bench.csv"
    write_csv(report, path)
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == EXPECTED_ROW_KEYS
    assert [row["status"] for row in rows] == ["passed", "parity failed", "unavailable"]
    assert float(rows[0]["episode_latency_max_ms"]) == pytest.approx(30.0)
    assert math.isnan(float(rows[0]["miou_pfenet_pct"]))
    assert rows[2]["episode_latency_p50_ms"] == ""


def test_table_and_markdown_show_every_backend_and_reason(report: BenchReport) -> None:
    console = Console(width=200, record=True)
    console.print(render_table(report))
    text = console.export_text()
    for expected in (
        "torch",
        "ort",
        "trt",
        "TensorRT is not installed",
        "❗",
        "❎",
        "12.0",
        "57.97",
    ):
        assert expected in text
    markdown = render_markdown(report, "dpnet-bench --ckpt model.pt")
    assert "`dpnet-bench --ckpt model.pt`" in markdown
    assert "test cpu" in markdown
    assert markdown.count("\n| trt |") == 1
    assert (
        "\n| ort | ❗ parity failed: mIoU delta 0.500 pt > 0.1 pt | 20.0 | 12.0 | 26.5 | 29.8 "
        "| 57.97 | - | - | - | 40.50 | 50.00 | 60.00 | 0.500 | 99.000 | 97.50 |\n"
    ) in markdown
    assert "(max delta) | 0.500 | <= 0.1 | gate | **no** |" in markdown
    assert "(p50 ratio) | 0.800 | <= 0.6 | reported | no (reported only) |" in markdown


def test_the_last_line_names_each_gate_its_limit_and_the_exit_code(report: BenchReport) -> None:
    line = render_gates(report.targets, report.parity_failed, 3)
    assert line == "parity gates failed: ort_miou_delta_pt 0.500 <= 0.1 FAILED -> exit 3"
    # The gate's limit is the one the parity row was judged by: one limit per metric.
    ort = report.results[1]
    assert ort.parity is not None and ort.parity.max_miou_delta_pt == 0.1
    passed = dataclasses.replace(
        report,
        results=(report.results[0], dataclasses.replace(ort, status="passed", reason="")),
        targets=(dataclasses.replace(report.targets[0], measured=0.05, met=True),
                 report.targets[1]),
    )  # fmt: skip
    # A missed reported target (the speed ratio) leaves the exit code at 0.
    assert render_gates(passed.targets, passed.parity_failed, 3) == (
        "parity gates passed: ort_miou_delta_pt 0.050 <= 0.1 ok -> exit 0"
    )
    none = dataclasses.replace(report, results=report.results[:1], targets=())
    assert render_gates(none.targets, none.parity_failed, 3).endswith(
        "none measured (they compare rows with torch) -> exit 0"
    )


@pytest.mark.slow
def test_plot_writes_a_png(report: BenchReport, tmp_path: Path) -> None:
    path = tmp_path / "latency.png"
    plot_latency(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "latency.svg"
    plot_latency(report, svg)
    assert svg.read_bytes().lstrip().startswith(b"<?xml")
    with pytest.raises(OptionError, match=r"--plot .*latency.jpg: .*name it .png, .svg or .pdf"):
        plot_latency(report, tmp_path / "latency.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.png", "latency.svg"]


@pytest.mark.slow
def test_plot_legend_says_what_the_box_lines_and_marks_are(report: BenchReport) -> None:
    figure = latency_figure(report)
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [
        "median (p50)", "mean", "box: p25 to p75", "whiskers: p1 to p99", "runs beyond p1 / p99",
    ]  # fmt: skip


def test_tables_fit_80_columns_without_cutting_a_backend_name(report: BenchReport) -> None:
    long_rows = tuple(
        dataclasses.replace(result, backend=name)
        for result, name in zip(report.results, ("torch-fp16", "ort-fp16", "trt"), strict=True)
    )
    narrow = dataclasses.replace(report, results=(*report.results, *long_rows))
    console = Console(width=80, record=True)
    console.print(render_table(narrow))
    console.print(render_targets(narrow.targets))
    text = console.export_text()
    lines = text.splitlines()
    assert "…" not in text
    assert max(console.measure(line).maximum for line in lines) <= 80
    rows = [line for line in lines if line.startswith("│ ")]
    names = [row.split("│")[1].strip() for row in rows]
    # Latency and cached-support tables: every backend; accuracy and parity: those measured.
    assert names.count("torch-fp16") == 4 and names.count("ort-fp16") == 4
    assert set(names) >= {"torch", "ort", "trt", "ort_miou_delta_pt"}
    assert "❗ parity failed" in text and "12.0" in text
    assert "❌ gate" in text and "➖ missed" in text  # a failed gate, a missed reported target
    # Narrower still: numbers fold, names and statuses stay whole.
    console = Console(width=56, record=True)
    console.print(render_table(narrow))
    text = console.export_text()
    names = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│ ")]
    assert "…" not in text and names.count("torch-fp16") == 4
    assert "❗ parity failed" in text
