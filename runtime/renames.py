"""Old spellings of command-line options, kept working for one release.

Every command speaks one vocabulary (``docs/cli.md``): ``--model`` an export folder, ``--ckpt``
a checkpoint, ``--out`` the one thing a command writes, ``--preset``, units in names. Options
that used another spelling are listed once, here, as :class:`Renamed` rows.
:func:`~dpnet_runtime.console.run_app` rewrites the arguments with :func:`rewrite_argv` before
typer parses them and prints one deprecation line per old spelling on stderr, so the old
names stay out of ``--help`` and no command carries code of its own for them.

A row can rename an option (``--artifacts DIR`` -> ``--model DIR``), turn a flag into an
option value (``--fp16`` -> ``--precision fp16``), rename values (``--backend onnxruntime`` ->
``--backend ort``) or derive the new value from the old one (``--onnx DIR/dpnet.onnx`` ->
``--model DIR``).

>>> rewrite_argv("dpnet-bench", ["--artifacts", "out/", "--warmup=2"])[0]
['--model', 'out/', '--warmup-s', '2']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "REMOVED_IN",
    "RENAMES",
    "Renamed",
    "commands_with_renames",
    "rewrite_argv",
]

REMOVED_IN: Final = "0.3"
"""The dpnet release that drops the old spellings."""


@dataclass(frozen=True)
class Renamed:
    """One old spelling of one command's option.

    Attributes:
        command: the command as typed, subcommand included (``dpnet-export onnx``).
        old: the old option (``--artifacts``).
        new: the option that replaces it (may equal ``old`` when only values change).
        flag_value: ``old`` is a flag: it becomes ``new flag_value``.
        values: old value -> new value; with ``old == new`` only these values are deprecated.
        convert: computes the new value from the old one (``--onnx FILE`` -> its folder).
        keeps_value: for a flag that became an option of the same name (``--json``): the
            token after it is already the new form's value when this returns True.
    """

    command: str
    old: str
    new: str
    flag_value: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    convert: Callable[[str], str] | None = None
    keeps_value: Callable[[str], bool] | None = None


def _folder_of(path: str) -> str:
    return os.fspath(Path(path).parent)


def _as_folder(path: str) -> str:
    return path if path.endswith((os.sep, "/")) else path + "/"


def _is_report_path(token: str) -> bool:
    # `dpnet-export check --json model.onnx`: the flag form, the ONNX file its argument.
    return token == "-" or not (token.startswith("-") or token.lower().endswith(".onnx"))


RENAMES: Final[tuple[Renamed, ...]] = (
    Renamed("dpnet-segment", "--out-dir", "--out", convert=_as_folder),
    Renamed("dpnet-train", "--config", "--preset"),
    Renamed("dpnet-bench", "--artifacts", "--model"),
    Renamed("dpnet-bench", "--warmup", "--warmup-s"),
    Renamed("dpnet-bench serve", "--artifacts", "--model"),
    Renamed("dpnet-bench serve", "--warmup", "--warmup-requests"),
    Renamed("dpnet-export triton", "--artifacts", "--model"),
    Renamed("dpnet-export triton", "--repo", "--out"),
    Renamed("dpnet-export check", "--json", "--json", flag_value="-", keeps_value=_is_report_path),
    Renamed("python -m dpnet_bench.ccm_micro", "--artifacts", "--model"),
    Renamed("python -m dpnet_bench.localize", "--artifacts", "--model"),
    Renamed("python -m dpnet_bench.soak", "--md", "--markdown"),
    Renamed("dpnet-export onnx", "--fp16", "--precision", flag_value="fp16"),
    Renamed("dpnet-export onnx", "--int8", "--precision", flag_value="int8"),
    Renamed("dpnet-export trt", "--fp16", "--precision", flag_value="fp16"),
    Renamed("dpnet-export trt", "--int8", "--precision", flag_value="int8"),
    Renamed("dpnet-export trt", "--onnx", "--model", convert=_folder_of),
    Renamed(
        "dpnet-export triton",
        "--backend",
        "--backend",
        values={"onnxruntime": "ort", "tensorrt": "trt"},
    ),
)
"""The renames in force: each row's ``new`` spelling is an option of its command."""


def commands_with_renames(table: Sequence[Renamed] = RENAMES) -> frozenset[str]:
    """Every command that has a row in ``table``."""
    return frozenset(row.command for row in table)


def rewrite_argv(
    command: str, argv: Sequence[str], table: Sequence[Renamed] = RENAMES
) -> tuple[list[str], list[str]]:
    """Replace the old spellings of ``command``'s options in ``argv`` by the new ones.

    Arguments after ``--`` are left alone. ``--old=value`` is understood as ``--old value``.

    Args:
        command: the command as typed (``dpnet-export onnx``).
        argv: its arguments (the subcommand not included).
        table: the rename rows.

    Returns:
        The new arguments and one deprecation line per rewritten option.

    >>> rewrite_argv("dpnet-export onnx", ["--fp16", "--int8"])[0]
    ['--precision', 'fp16', '--precision', 'int8']
    """
    rows = {row.old: row for row in table if row.command == command}
    result: list[str] = []
    notes: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            result.extend(argv[index:])
            break
        name, equals, inline = token.partition("=")
        row = rows.get(name) if token.startswith("--") else None
        if row is None:
            result.append(token)
            index += 1
            continue
        following = argv[index + 1] if index + 1 < len(argv) else None
        if row.flag_value is not None:
            is_new_form = bool(equals) or (
                row.keeps_value is not None and following is not None and row.keeps_value(following)
            )
            if is_new_form:
                result.append(token)
            else:
                result += [row.new, row.flag_value]
                notes.append(_note(row, f"{row.old}", f"{row.new} {row.flag_value}"))
            index += 1
            continue
        value = inline if equals else following
        used = 1 if equals else 2
        if value is None:  # no value: typer reports it against the new name
            result.append(row.new)
            notes.append(_note(row, row.old, row.new))
            index += 1
            continue
        new_value = row.convert(value) if row.convert else row.values.get(value, value)
        if row.old == row.new and new_value == value:
            result += [row.new, value]
        else:
            result += [row.new, new_value]
            shown = (
                (f"{row.old} {value}", f"{row.new} {new_value}")
                if new_value != value
                else (row.old, row.new)
            )
            notes.append(_note(row, *shown))
        index += used
    return result, notes


def _note(row: Renamed, old: str, new: str) -> str:
    return (
        f"warning: {row.command} {old} is deprecated: use {new} "
        f"(the old spelling goes in dpnet {REMOVED_IN})"
    )
