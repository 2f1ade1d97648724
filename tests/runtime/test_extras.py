"""The pip-extra hints live in one place (dpnet_runtime.extras) and name extras that exist."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from dpnet_runtime.contract import FORMATS
from dpnet_runtime.extras import PACKAGE_EXTRAS, install_command, missing_package_message

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dpnet", "export", "runtime", "benchmarks", "serve")


def test_every_extra_named_exists_in_pyproject() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = set(PACKAGE_EXTRAS.values()) | {row.extra for row in FORMATS.values() if row.extra}
    assert named <= set(extras), named - set(extras)


def _message_strings(path: Path) -> list[str]:
    """Every string literal of a module's code (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip


def test_install_hints_are_written_in_one_module_only() -> None:
    writers = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if any(re.search(r"pip install '?dpnet", text) for text in _message_strings(path))
    )
    assert writers == ["runtime/extras.py"], writers


def test_the_hint_names_the_package_and_the_extra() -> None:
    assert install_command("trt") == "pip install 'dpnet[trt]'"
    assert install_command(None) == "pip install dpnet"
    assert missing_package_message("tensorrt", "the trt row") == (
        "the trt row needs tensorrt, which is not installed; install it with "
        "pip install 'dpnet[trt]'"
    )
