"""dpnet-bench end to end in a subprocess: every backend on a tiny model, and the parity gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_tiny_checkpoint

ALL_BACKENDS = "torch,torch-fp16,ort,ort-fp16,trt,trt-fp16"


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from dpnet_bench.cli import main; main()", *args]
    environment = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


@pytest.mark.slow
def test_every_backend_then_foreign_artifacts_fail_parity(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "export"  # does not exist yet: dpnet-bench exports into it
    report = tmp_path / "bench.json"
    common = ["--model", str(artifacts), "--episodes", "3", "--warmup-s", "0", "--threads", "2"]
    done = _bench("--ckpt", str(tiny_checkpoint), *common, "--backends", ALL_BACKENDS,
                  "--json", str(report), "--csv", str(tmp_path / "bench.csv"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dpnet-bench latency" in done.stdout
    data = json.loads(report.read_text())
    rows = {row["backend"]: row for row in data["results"]}
    assert list(rows) == ALL_BACKENDS.split(",")
    assert rows["torch"]["status"] == "passed"
    assert rows["ort"]["status"] == "passed"
    assert rows["ort"]["miou_delta_canet_pt"] == pytest.approx(0.0, abs=0.1)
    assert rows["ort"]["pixel_agreement_pct"] > 99.0
    assert rows["ort"]["query_latency_p50_ms"] > 0
    assert rows["ort-fp16"]["status"] == "passed", rows["ort-fp16"]["reason"]
    assert rows["ort-fp16"]["miou_delta_canet_pt"] == pytest.approx(0.0, abs=0.3)
    assert rows["ort-fp16"]["episode_latency_p50_ms"] > 0
    for name in ("torch-fp16", "trt", "trt-fp16"):  # they need CUDA / TensorRT here, or pass
        assert rows[name]["status"] in ("passed", "unavailable"), rows[name]
    for row in rows.values():
        assert (row["status"] == "passed") != bool(row["reason"]), row
    assert (artifacts / "dpnet.onnx").is_file()
    # The last line lists each gate with its limit (the precision's, as in the targets) and
    # the exit code; the reported targets do not change it.
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("parity gates passed: ") and last.endswith("-> exit 0"), last
    assert "ort_miou_delta_pt 0.000 <= 0.05 ok" in last and "ort_fp16_miou_delta_pt" in last
    targets = {target["name"]: target for target in data["targets"]}
    assert targets["ort_miou_delta_pt"]["limit"] == rows["ort"]["max_miou_delta_pt"] == 0.05
    assert (
        targets["ort_miou_delta_pt"]["gate"] and not targets["ort_vs_torch_episode_ratio"]["gate"]
    )

    # Graphs of another checkpoint (one that predicts background everywhere): exit 3.
    other = write_tiny_checkpoint(tmp_path / "other.pt", seed=0, background_bias=1e3)
    failed = _bench("--ckpt", str(other), *common, "--backends", "torch,ort")
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "parity failed" in failed.stdout
    last = failed.stdout.strip().splitlines()[-1]
    assert last.startswith("parity gates failed: ") and last.endswith("-> exit 3"), last
    assert "ort_miou_delta_pt" in last and "FAILED" in last
