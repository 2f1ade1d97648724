"""dpnet-serve's command line: help and option errors without Ray, the missing-extra message,
and a bad model refused before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpnet_serve.options import ServeOptions

# Runs the console script with Ray hidden, as in an install without the serve extra.
_WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from dpnet_serve.cli import main; main()"
_WITH_RAY = "from dpnet_serve.cli import main; main()"


def _serve(program: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", program, *args],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip


def test_help_and_option_errors_need_no_ray(tmp_path: Path) -> None:
    shown = _serve(_WITHOUT_RAY, "--help")
    assert shown.returncode == 0, shown.stderr
    for flag in ("--model", "--replicas", "--max-batch", "--batch-wait-ms", "--store", "--address",
                 "--token-file", "--allowed-hosts", "--max-body-bytes", "--request-timeout-s",
                 "--max-queued-requests", "--max-replicas", "--drain-timeout-s"):  # fmt: skip
        assert flag in shown.stdout
    config = _serve(_WITHOUT_RAY, "config", "--help")
    assert config.returncode == 0 and "--out" in config.stdout and "--token-file" in config.stdout
    refused = _serve(_WITHOUT_RAY, "--model", str(tmp_path), "--replicas", "0")
    assert refused.returncode == 2  # a usage error
    assert refused.stderr.strip() == "error: replicas must be at least 1, got 0"


def test_without_the_serve_extra_one_line_names_it(tmp_path: Path) -> None:
    done = _serve(_WITHOUT_RAY, "--model", str(tmp_path))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'dpnet[serve]'" in lines[0], done.stderr
    assert done.stdout == ""


def test_a_bad_model_is_refused_before_ray_starts(tmp_path: Path) -> None:
    done = _serve(_WITH_RAY, "--model", str(tmp_path / "missing"), "--port", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and "dpnet-export onnx" in done.stderr
    assert "starting Ray" not in done.stdout


@pytest.mark.slow
def test_another_address_than_loopback_needs_a_token(balanced_export_dir: Path) -> None:
    done = _serve(_WITH_RAY, "--model", str(balanced_export_dir), "--host", "0.0.0.0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: refusing to serve 0.0.0.0 without a token")
    assert "starting Ray" not in done.stdout


@pytest.mark.slow
def test_a_store_of_another_export_is_refused_before_ray_starts(
    balanced_export_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "index.json").write_text(
        '{"format": "dpnet-support-store/1", "export_id": "another", "classes": []}'
    )
    done = _serve(_WITH_RAY, "--model", str(balanced_export_dir), "--store", str(store))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "holds classes encoded by another export" in done.stderr
    assert "starting Ray" not in done.stdout


@pytest.mark.parametrize(
    ("address", "on_loopback"),
    [
        (None, True),
        ("127.0.0.1:6379", True),
        ("localhost:6379", True),
        ("10.0.0.5:6379", False),
        ("auto", False),
        ("ray://127.0.0.1:10001", False),  # Ray Client: its own connection rules
        ("127.0.0.1", False),
    ],
)
def test_a_head_on_loopback_is_joined_with_the_loopback_settings(
    tmp_path: Path, address: str | None, on_loopback: bool
) -> None:
    assert ServeOptions(model=tmp_path, address=address).on_loopback is on_loopback
