"""Fixtures of the export tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

RunCli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def export_cli() -> RunCli:
    """Run ``dpnet-export ARGS`` in a subprocess (through its entry point, wide terminal)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = "from dpnet_export.cli import main; main()"
        env = {**os.environ, "COLUMNS": "300"}
        return subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,  # an export of the tiny model on a loaded 2-core machine
        )

    return run
