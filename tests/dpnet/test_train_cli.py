"""The dpnet-train console script, run for real in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dpnet.checkpoint import load_checkpoint

TRAIN = [sys.executable, "-m", "dpnet.train"]


@pytest.mark.slow
def test_help_lists_the_options() -> None:
    completed = subprocess.run([*TRAIN, "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0
    flags = ("--dataset", "--fold", "--shots", "--steps", "--resume", "--ablation-variant",
             "--coco-split")  # fmt: skip
    for flag in flags:
        assert flag in completed.stdout


@pytest.mark.slow
def test_tiny_run_writes_checkpoints_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "--out", str(out), "--steps", "2", "--batch-size", "1", "--val-every", "0",
        "--val-episodes", "2", "--threads", "1", "--device", "cpu", "--fold", "3",
    ]  # fmt: skip
    completed = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "2/2 steps" in completed.stdout
    meta = load_checkpoint(out / "best.pt").meta
    assert (meta["dataset"], meta["fold"], meta["shots"]) == ("synthetic", 3, 1)
    again = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1
    assert "--resume" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_a_coco_split_for_another_dataset_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--out", str(out), "--dataset", "synthetic", "--coco-split", "consecutive"]
    completed = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2  # a usage error
    assert completed.stderr.strip().splitlines() == [
        "error: coco-split applies to the coco dataset only, not to 'synthetic'"
    ]
    assert not out.exists()
