"""``dpnet-export check``: the TensorRT lint as a table (and JSON); exit 3 on errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from dpnet_runtime.console import EXIT_CHECK_FAILED, stdout_console
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import JSON_FORMATS, check_file_output

if TYPE_CHECKING:
    from dpnet_export.lint import LintReport

__all__ = ["command"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def command(
    model: Annotated[
        Path, typer.Argument(help="ONNX file to lint, e.g. out/dpnet.onnx.", metavar="MODEL")
    ],
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Also write the report as JSON to this file; - prints it instead."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="trt (every rule) or ort (ONNX Runtime only: TensorRT's Q/DQ and UINT8 rules "
            "not applied); default: the graph's int8_target metadata, else trt."
        ),
    ] = None,
) -> None:
    """Lint an ONNX graph for the TensorRT ONNX parser; exit code 3 when it has errors.

    dpnet-export onnx runs the same lint on every graph it writes.
    """
    from dpnet_export.lint import lint_onnx

    to_stdout = json_path == Path("-")
    if not to_stdout:
        check_file_output("--json", json_path, JSON_FORMATS, {"MODEL": [model]})
    report = lint_onnx(model, target)
    text = json.dumps(report.to_dict(), indent=2)
    if to_stdout:
        stdout_console.print_json(text)
    else:
        _print_table(report)
        if json_path is not None:
            atomic_write_text(json_path, text + "\n")
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _print_table(report: LintReport) -> None:
    rules = "" if report.target == "trt" else " (ONNX Runtime only: no TensorRT Q/DQ rules)"
    table = Table(title=f"TensorRT {report.table_version} lint{rules}: {report.model}")
    for column in ("severity", "node", "op", "message"):
        table.add_column(column, overflow="fold")
    for finding in report.findings:
        cells = (finding.severity, finding.node, finding.op_type, finding.message)
        table.add_row(*cells, style=_STYLE[finding.severity])
    stdout_console.print(table)
    verdict = ("passed", "green") if report.passed else ("failed", "bold red")
    counts = (
        f": {report.node_count} nodes, {len(report.errors)} error(s), "
        f"{len(report.warnings)} warning(s)"
    )
    stdout_console.print(Text.assemble(verdict, counts))
