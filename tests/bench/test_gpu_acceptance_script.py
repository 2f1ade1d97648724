"""benchmarks/gpu/acceptance.sh: argument handling and skip logic, run for real on this machine.

The GPU parts cannot run here; what can is the script's own logic: arguments, what it detects,
what it plans and skips, and that a machine without a GPU gets exit 0 at once and no results.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu" / "acceptance.sh"
no_gpu = pytest.mark.skipif(
    torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is not None,
    reason="this machine has PyTorch CUDA or TensorRT: the script would measure",
)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(SCRIPT), "--python", sys.executable, *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


@pytest.mark.slow
@no_gpu
def test_cpu_only_machine_exits_0_and_says_what_it_skipped(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path / "results"))
    assert result.returncode == 0, result.stderr
    assert (
        "skipped: TensorRT tests and the trt bench row: TensorRT is not installed" in result.stdout
    )
    assert "skipped: torch and torch-fp16 on CUDA: PyTorch has no CUDA device" in result.stdout
    assert "no results written" in result.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--episodes", "many"], "--episodes must be a number"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr


def test_help_prints_the_usage() -> None:
    result = _run("--help")
    assert result.returncode == 0 and "usage: benchmarks/gpu/acceptance.sh" in result.stdout


@pytest.mark.slow
@no_gpu
def test_fake_pytorch_cuda_without_tensorrt_plans_torch_rows_only(tmp_path: Path) -> None:
    # A machine with PyTorch CUDA and no TensorRT: torch and torch-fp16 are still measured.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import torch\ntorch.cuda.is_available = lambda: True\n")
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = _run("--dry-run", "--episodes", "7", env={"PYTHONPATH": pythonpath})
    assert result.returncode == 0, result.stderr
    assert "plan: tests=no, bench backends=torch,torch-fp16, episodes=7" in result.stdout
    assert "skipped: TensorRT tests" in result.stdout and "PyTorch has no CUDA" not in result.stdout
