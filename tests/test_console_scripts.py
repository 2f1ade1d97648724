"""Every console script of pyproject.toml, run as its entry point would be, without torch.

A base install (``pip install dpnet``) has no torch, torchvision, onnx, onnxscript or
matplotlib, but still puts every script on PATH. Each script here runs in a subprocess in which
those packages cannot be imported (an import hook raises ``ModuleNotFoundError`` for them, as
Python does for a package that is not installed) and must answer with one line naming the extra
to install, exit 1. The entry points are read from pyproject.toml, so a script added later is
covered, and a stale editable install cannot hide a wrong one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_SCRIPTS: dict[str, str] = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"][
    "scripts"
]
# What a user would type, and the first missing package the script meets.
_CALLS = [
    ("dpnet-train", ["--steps", "1"], "torch"),
    ("dpnet-eval", ["--ckpt", "model.pt"], "torch"),
    ("dpnet-demo", [], "torch"),
    ("dpnet-info", [], "torch"),
    ("dpnet-export", ["onnx", "--ckpt", "model.pt"], "onnx"),
    ("dpnet-export", ["check", "model.onnx"], "onnx"),
    ("dpnet-bench", ["--ckpt", "model.pt"], "torch"),
]
_TORCH_FREE = {"dpnet-segment", "dpnet-serve"}

_RUN_WITHOUT_TRAIN_EXTRA = textwrap.dedent(
    """
    import importlib.abc
    import sys

    class Uninstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in {"torch", "torchvision", "onnx", "onnxscript",
                                          "matplotlib"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    # What the console-script wrapper pip writes does: import the entry point, call it.
    script, entry_point, *sys.argv[1:] = sys.argv[1:]
    sys.argv[0] = script
    module, _, function = entry_point.partition(":")
    sys.exit(getattr(__import__(module, fromlist=[function]), function)())
    """
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", _RUN_WITHOUT_TRAIN_EXTRA, script, _SCRIPTS[script], *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, cwd=_ROOT
    )


def test_every_script_is_covered() -> None:
    assert set(_SCRIPTS) == {script for script, _, _ in _CALLS} | _TORCH_FREE


@pytest.mark.parametrize(
    ("script", "args", "package"), _CALLS, ids=[" ".join([s, *a]) for s, a, _ in _CALLS]
)
def test_a_script_without_torch_names_the_extra_in_one_line(
    script: str, args: list[str], package: str
) -> None:
    completed = _run(script, *args)
    assert completed.returncode == 1, completed.stderr
    assert completed.stderr.splitlines() == [
        f"error: {script} needs {package}, which is not installed; "
        "install it with pip install 'dpnet[train]'"
    ], completed.stderr


@pytest.mark.parametrize(
    ("script", "args"),
    [("dpnet-segment", []), ("dpnet-export", []), ("dpnet-serve", []), ("dpnet-bench", ["serve"])],
)
def test_what_needs_no_torch_still_works_without_it(script: str, args: list[str]) -> None:
    completed = _run(script, *args, "--help")
    assert completed.returncode == 0, completed.stderr
    assert "Usage:" in completed.stdout
