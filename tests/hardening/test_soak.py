"""A short soak in CI: 1,000 queries against one cached support set, RSS growth under 5 %."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dpnet_bench.soak import SoakOptions, run_soak, to_markdown
from dpnet_runtime.errors import InputError

pytestmark = pytest.mark.slow


def test_thousand_queries_keep_memory_flat(small_export: Path) -> None:
    result = run_soak(small_export, SoakOptions(queries=1_000, window=250, warmup=30))
    assert result.queries == 1_000 and len(result.rss_samples_mib) == 5
    assert result.rss_growth_pct < 5.0, to_markdown(result)
    assert result.passed
    assert min(result.latency_first_p50_ms, result.latency_last_p50_ms) > 0
    assert "1000 queries" in to_markdown(result)


def test_soak_rejects_fewer_queries_than_two_windows(small_export: Path) -> None:
    with pytest.raises(InputError, match="twice"):
        run_soak(small_export, SoakOptions(queries=100, window=60))


def test_soak_command_writes_json_and_markdown(small_export: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dpnet_bench.soak", "--model", str(small_export),
               "--queries", "40", "--window", "20", "--json", str(tmp_path / "soak.json"),
               "--markdown", str(tmp_path / "soak.md"), "--note", "made by the test"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["queries"] == 40 and report["command"].startswith("python -m dpnet_bench.soak")
    assert "--note" not in report["command"] and report["note"] == "made by the test"
    markdown = (tmp_path / "soak.md").read_text()
    assert "| growth start -> end |" in markdown and "made by the test" in markdown
