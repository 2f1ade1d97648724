"""Every command behaves alike (docs/cli.md): bare, it prints its help and starts nothing; a bad
option value is a usage error, exit 2, in one line; help text never cuts an option's name.

Each command runs as a user runs it, in a subprocess (the console scripts of pyproject.toml,
``python -m`` for the benchmark tools), in an empty working folder that must stay empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import typer.main

from dpnet_bench.cli import app as bench_app

pytestmark = pytest.mark.slow

_ROOT = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent
_SCRIPTS = set(tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]["scripts"])

# The command as typed -> how to start it.
COMMANDS: dict[str, list[str]] = {
    **{script: [str(_BIN / script)] for script in sorted(_SCRIPTS)},
    **{f"dpnet-export {sub}": [str(_BIN / "dpnet-export"), sub]
       for sub in ("onnx", "trt", "check", "triton")},
    "dpnet-bench serve": [str(_BIN / "dpnet-bench"), "serve"],
    **{f"python -m dpnet_bench.{tool}": [sys.executable, "-m", f"dpnet_bench.{tool}"]
       for tool in ("ccm_micro", "localize", "soak", "ablation", "int8_parts", "similarity_int8")},
}  # fmt: skip
_TAKES_NO_OPTIONS = {"dpnet-info"}


def _run(command: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMANDS[command], *args], capture_output=True, text=True, timeout=300, check=False,
        cwd=cwd, env={**os.environ, **env},
    )  # fmt: skip


def test_every_console_script_is_listed() -> None:
    assert set(COMMANDS) >= _SCRIPTS


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - _TAKES_NO_OPTIONS))
def test_a_bare_command_prints_its_help_and_starts_nothing(command: str, tmp_path: Path) -> None:
    start = time.monotonic()
    done = _run(command, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr  # as click does for a command group
    assert done.stderr.startswith(f"Usage: {command} [OPTIONS]"), done.stderr
    assert "--help" in done.stderr and "Error" not in done.stderr
    assert time.monotonic() - start < 120  # dpnet-demo no longer starts a 3-minute job
    assert list(tmp_path.iterdir()) == []


# One option value per command that dpnet itself refuses (not typer), and the line it prints.
USAGE_ERRORS = {
    "dpnet-train": (["--out", "run", "--dataset", "bogus"], "error: unknown dataset 'bogus'"),
    "dpnet-eval": (["--ckpt", "m.pt", "--scales", "a"], "error: --scales must be numbers"),
    "dpnet-demo": (["--steps", "0"], "error: steps must be at least 1, got 0"),
    "dpnet-export onnx": (["--ckpt", "m.pt", "--max-shots", "0"], "error: --max-shots must lie"),
    "dpnet-export trt": (["--model", "out", "--shots-range", "5:1:1", "--print-trtexec"],
                         "error: shape range 5:1:1 must satisfy"),
    "dpnet-export check": (["m.onnx", "--json", "lint.txt"],
                           "error: --json lint.txt: dpnet does not write .txt files"),
    "dpnet-export triton": (["--model", "out", "--max-batch", "0"], "error: --max-batch and"),
    "dpnet-segment": (["--model", "out", "--support", "a.png", "--query", "q.png", "--out",
                       "m.png"], "error: --support 'a.png' must be IMAGE:MASK"),
    "dpnet-bench": (["--ckpt", "m.pt", "--backends", "tpu"], "error: unknown backends ['tpu']"),
    "dpnet-bench serve": (["--model", "out", "--concurrency", "a"],
                          "error: --concurrency must be client counts"),
    "dpnet-serve": (["--model", "out", "--replicas", "0"], "error: replicas must be at least 1"),
    "python -m dpnet_bench.ccm_micro": (["--sides", "a"], "error: --sides must be integers"),
    "python -m dpnet_bench.localize": (["--model", "out", "--precision", "fp8"],
                                       "error: --precision must be one of"),
    "python -m dpnet_bench.soak": (["--model", "out", "--json", "s.md"],
                                   "error: --json s.md: dpnet does not write .md files"),
    "python -m dpnet_bench.ablation": (["--variants", "none,bogus"],
                                       "error: unknown or no ablation variants ['bogus']"),
    "python -m dpnet_bench.int8_parts": (["--model", "out", "--shots", "0"],
                                         "error: shots, episodes, threads and profile runs must"),
    "python -m dpnet_bench.similarity_int8": (["--shots", "1,a"],
                                              "error: --shots must be comma-separated integers"),
}  # fmt: skip


def test_every_command_has_a_usage_error_case() -> None:
    assert set(USAGE_ERRORS) == set(COMMANDS) - _TAKES_NO_OPTIONS - {"dpnet-export"}


@pytest.mark.parametrize("command", sorted(USAGE_ERRORS))
def test_a_bad_option_value_is_a_usage_error_in_one_line(command: str, tmp_path: Path) -> None:
    args, line = USAGE_ERRORS[command]
    done = _run(command, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert list(tmp_path.iterdir()) == []


def test_typer_usage_errors_exit_2_too(tmp_path: Path) -> None:
    done = _run("dpnet-segment", "--bogus", cwd=tmp_path)
    assert done.returncode == 2
    assert "No such option: --bogus" in done.stderr


def test_bench_help_keeps_every_option_name_whole_at_80_columns(tmp_path: Path) -> None:
    done = _run("dpnet-bench", "--help", cwd=tmp_path, COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in done.stdout
    options = [
        name
        for param in typer.main.get_command(bench_app).params
        for name in (*param.opts, *param.secondary_opts)
    ]
    assert "--min-pixel-agreement" in options  # the longest option name
    words = {word.strip(",[]/") for line in lines for word in line.split()}
    assert set(options) <= words
