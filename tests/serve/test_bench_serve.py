"""dpnet-bench serve against the session's real server: the in-process row and every level,
JSON and markdown; exit 3 when the server's masks are not the in-process ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    program = "from dpnet_bench.scripts import bench; bench()"  # the dpnet-bench console script
    command = [sys.executable, "-c", program, "serve", *args]
    environment = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def test_levels_in_process_row_and_reports(
    server: Server, balanced_export_dir: Path, tmp_path: Path
) -> None:
    report, markdown = tmp_path / "serve.json", tmp_path / "serve.md"
    done = _bench(
        "--model", str(balanced_export_dir), "--url", server.url, "--requests", "12",
        "--concurrency", "1,4", "--warmup-requests", "2", "--threads", "1", "--wait-s", "120",
        "--server-pid", str(server.process.pid), "--idle-s", "2",
        "--json", str(report), "--markdown", str(markdown),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(report.read_text())
    assert data["schema"] == "dpnet-bench-serve/1" and data["check_failed"] is False
    rows = data["results"]
    assert [(row["path"], row["concurrency"]) for row in rows] == [
        ("in-process", 1), ("serve", 1), ("serve", 4),
    ]  # fmt: skip
    for row in rows:
        assert (row["requests"], row["errors"], row["mask_mismatches"]) == (12, 0, 0)
        assert len(row["latency_samples_ms"]) == 12
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["throughput_per_s"] > 0 and row["support_graph_runs"] == 0
    for row in rows[1:]:
        counts = {int(size): n for size, n in row["batch_size_counts"].items()}
        assert sum(size * n for size, n in counts.items()) == 12  # every request, in batches
        assert max(counts) <= 4  # the server's --max-batch
    targets = {target["name"]: target for target in data["targets"]}
    assert targets["serve_errors"]["met"] and targets["support_graph_runs_during_queries"]["met"]
    assert targets["serve_c1_p50_vs_in_process_ratio"]["measured"] > 0
    assert "serve_c4_throughput_vs_in_process_ratio" in targets
    # CPU by process: the query head computes, the load generator sends, all idle a little.
    for row in rows:
        cpu = row["cpu_ms_per_request"]
        key = "in-process" if row["path"] == "in-process" else "query head"
        assert cpu[key] > 0, cpu
    assert rows[1]["cpu_ms_per_request"]["load generator (this process)"] > 0
    assert {"query head", "ingress", "Serve HTTP proxy"} <= set(data["idle_cpu_ms_per_s"])
    text = markdown.read_text()
    assert text.startswith("# dpnet-bench serve: 129x129, 1-shot")
    assert "Command: `dpnet-bench serve --model" in text and "| serve | 4 | 12 | 0 | 0 |" in text
    assert (
        "| process | idle ms/s | in-process c=1 ms/request |" in text and "| query head |" in text
    )
    # The last line names every gate with its limit; the missed speed targets do not count.
    assert done.stdout.strip().splitlines()[-1] == (
        "parity gates passed: serve_errors 0.000 <= 0 ok, serve_mask_mismatches 0.000 <= 0 ok, "
        "support_graph_runs_during_queries 0.000 <= 0 ok -> exit 0"
    )


def test_masks_unlike_the_in_process_ones_fail_with_exit_3(
    server: Server, tiny_export_dir: Path, tmp_path: Path
) -> None:
    # The in-process row runs another export than the server: its masks differ.
    done = _bench(
        "--model", str(tiny_export_dir), "--url", server.url, "--requests", "3",
        "--concurrency", "2", "--warmup-requests", "0", "--threads", "1",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    level = json.loads((tmp_path / "r.json").read_text())["results"][1]
    assert level["mask_mismatches"] > 0
    assert (level["errors"], level["support_graph_runs"]) == (0, 0)  # exit 3 for the masks
    last = done.stdout.strip().splitlines()[-1]
    failed = f"serve_mask_mismatches {level['mask_mismatches']:.3f} <= 0 FAILED"
    assert last.startswith("parity gates failed: ") and failed in last, last
    assert last.endswith("-> exit 3"), last


def test_no_server_is_a_one_line_error(balanced_export_dir: Path) -> None:
    done = _bench("--model", str(balanced_export_dir), "--url", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: no ready dpnet-serve at http://127.0.0.1:9")
