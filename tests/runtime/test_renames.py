"""The table of old option spellings and the argv rewriting run_app applies before typer parses.

The rewriting is tested on argument lists; every row in force is checked against the real typer
apps (its new spelling is an option of its command, its old one is not), and a few old
spellings run end to end in a subprocess (one deprecation line, the command then works).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from dpnet_runtime.renames import (
    REMOVED_IN,
    RENAMES,
    rewrite_argv,
)

# Every command the tables name -> its typer app.
_APPS = {
    "dpnet-segment": "dpnet_runtime.cli:app",
    "dpnet-train": "dpnet.train.cli:app",
    "dpnet-bench": "dpnet_bench.cli:app",
    "dpnet-bench serve": "dpnet_bench.serve_cli:app",
    "dpnet-export": "dpnet_export.cli:app",
    "python -m dpnet_bench.ccm_micro": "dpnet_bench.ccm_micro:app",
    "python -m dpnet_bench.localize": "dpnet_bench.localize:app",
    "python -m dpnet_bench.soak": "dpnet_bench.soak:app",
}


def _options(command: str) -> set[str]:
    """The option spellings (``--model``) the real app of ``command`` takes."""
    program, _, sub = command.partition(" ")
    if command in _APPS:
        app_path, sub = _APPS[command], ""
    else:
        app_path = _APPS[program]
    module, _, name = app_path.partition(":")
    click_command = typer.main.get_command(getattr(importlib.import_module(module), name))
    if sub:
        click_command = click_command.commands[sub]  # type: ignore[attr-defined]
    return {opt for param in click_command.params for opt in (*param.opts, *param.secondary_opts)}


def test_rows_in_force_name_options_their_commands_have_and_drop() -> None:
    for row in RENAMES:
        options = _options(row.command)
        assert row.new in options, row
        assert row.old == row.new or row.old not in options, row


def test_one_row_per_old_spelling() -> None:
    keys = [(row.command, row.old) for row in RENAMES]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    ("command", "argv", "expected", "notes"),
    [
        ("dpnet-bench", "--ckpt m.pt --artifacts out/", "--ckpt m.pt --model out/", 1),
        ("dpnet-bench", "--artifacts=out/ --warmup 2", "--model out/ --warmup-s 2", 2),
        ("dpnet-bench serve", "--warmup 5", "--warmup-requests 5", 1),
        ("dpnet-train", "--config tiny --out run", "--preset tiny --out run", 1),
        ("dpnet-segment", "--out-dir masks", "--out masks/", 1),
        ("dpnet-segment", "--out-dir masks/", "--out masks/", 1),
        ("dpnet-export triton", "--artifacts o --repo r", "--model o --out r", 2),
        ("python -m dpnet_bench.soak", "--md s.md", "--markdown s.md", 1),
        # New spellings pass untouched, and so does everything after "--".
        ("dpnet-bench", "--model out/ --warmup-s 1", "--model out/ --warmup-s 1", 0),
        ("dpnet-bench", "-- --artifacts", "-- --artifacts", 0),
        # An option of another command is not this one's old spelling.
        ("dpnet-segment", "--artifacts x", "--artifacts x", 0),
        # An old spelling without its value: the new name, so typer reports the missing value.
        ("dpnet-bench", "--artifacts", "--model", 1),
    ],
)  # fmt: skip
def test_renamed_options_are_rewritten(command: str, argv: str, expected: str, notes: int) -> None:
    rewritten, lines = rewrite_argv(command, argv.split())
    assert rewritten == expected.split()
    assert len(lines) == notes


def test_a_flag_that_became_a_path_keeps_its_new_form() -> None:
    check = "dpnet-export check"
    assert rewrite_argv(check, ["m.onnx", "--json"])[0] == ["m.onnx", "--json", "-"]
    assert rewrite_argv(check, ["--json", "m.onnx"])[0] == ["--json", "-", "m.onnx"]
    assert rewrite_argv(check, ["--json", "--help"])[0] == ["--json", "-", "--help"]
    for new_form in (["--json", "report.json", "m.onnx"], ["--json", "-"], ["--json=r.json"]):
        assert rewrite_argv(check, new_form) == (new_form, [])


def test_the_deprecation_line_names_both_spellings_and_the_release() -> None:
    _, (line,) = rewrite_argv("dpnet-bench", ["--artifacts", "out/"])
    assert line == (
        f"warning: dpnet-bench --artifacts is deprecated: use --model "
        f"(the old spelling goes in dpnet {REMOVED_IN})"
    )
    _, (line,) = rewrite_argv("dpnet-segment", ["--out-dir", "m"])
    assert line.startswith("warning: dpnet-segment --out-dir m is deprecated: use --out m/ ")


@pytest.mark.parametrize(
    ("command", "argv", "expected", "notes"),
    [
        ("dpnet-export onnx", "--ckpt m.pt --fp16", "--ckpt m.pt --precision fp16", 1),
        ("dpnet-export onnx", "--fp16 --int8", "--precision fp16 --precision int8", 2),
        ("dpnet-export trt", "--onnx out/dpnet.onnx --int8", "--model out --precision int8", 2),
        ("dpnet-export trt", "--onnx=dpnet.onnx", "--model .", 1),
        ("dpnet-export trt", "--fp16 --precision fp16", "--precision fp16 --precision fp16", 1),
        ("dpnet-export triton", "--backend onnxruntime", "--backend ort", 1),
        ("dpnet-export triton", "--backend=tensorrt", "--backend trt", 1),
        ("dpnet-export triton", "--backend trt", "--backend trt", 0),
    ],
)  # fmt: skip
def test_the_precision_renames_rewrite_to_precision_lists(
    command: str, argv: str, expected: str, notes: int
) -> None:
    rewritten, lines = rewrite_argv(command, argv.split())
    assert rewritten == expected.split()
    assert len(lines) == notes


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpnet_runtime", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_an_old_spelling_still_works_with_one_warning_line(tmp_path: Path) -> None:
    # --out-dir reaches typer as --out DIR/: the model is then found missing (after parsing).
    done = _run("--model", str(tmp_path / "none"), "--support", "a.png:b.png", "--query",
                str(tmp_path), "--out-dir", str(tmp_path / "masks"))  # fmt: skip
    lines = done.stderr.splitlines()
    assert lines[0].startswith("warning: dpnet-segment --out-dir ")
    assert "--help" not in done.stderr and "No such option" not in done.stderr
    assert len(lines) == 2 and lines[1].startswith("error: ")
