"""``dpnet-export check``: the TensorRT lint as a table (or JSON); exit 3 on errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dpnet_runtime.console import EXIT_CHECK_FAILED, stdout_console

__all__ = ["command"]

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def command(
    model: Annotated[Path, typer.Argument(help="ONNX file to lint, e.g. out/dpnet.onnx.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
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

    report = lint_onnx(model, target)
    if as_json:
        stdout_console.print_json(json.dumps(report.to_dict()))
    else:
        rules = "" if report.target == "trt" else " (ONNX Runtime only: no TensorRT Q/DQ rules)"
        title = f"TensorRT {report.table_version} lint{rules}: {escape(report.model)}"
        table = Table(title=title)
        for column in ("severity", "node", "op", "message"):
            table.add_column(column, overflow="fold")
        for finding in report.findings:
            cells = (finding.severity, finding.node, finding.op_type, finding.message)
            table.add_row(*(escape(cell) for cell in cells), style=_STYLE[finding.severity])
        stdout_console.print(table)
        verdict = "[green]passed[/]" if report.passed else "[bold red]failed[/]"
        stdout_console.print(
            f"{verdict}: {report.node_count} nodes, {len(report.errors)} error(s), "
            f"{len(report.warnings)} warning(s)"
        )
    if not report.passed:
        raise typer.Exit(EXIT_CHECK_FAILED)
