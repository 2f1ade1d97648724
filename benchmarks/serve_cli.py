"""``dpnet-bench serve``: the load test of a running dpnet-serve (:mod:`dpnet_bench.serve_load`).

Thin: it parses flags into :class:`~dpnet_bench.serve_load.ServeBenchOptions`, calls
:func:`~dpnet_bench.serve_load.run_serve_bench` with a progress bar and renders the report.
Exit codes: 0 passed, 1 user error (no server, say), 2 usage error, 3 a request failed, a mask
differed from the in-process one or the support graph re-ran. ``dpnet-bench serve ...`` reaches
:data:`app` through :func:`dpnet_bench.scripts.bench`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Final

import typer

from dpnet_bench.report import progress_advancer, render_gates
from dpnet_bench.serve_load import ServeBenchOptions, run_serve_bench
from dpnet_bench.serve_report import (
    render_serve_markdown,
    render_serve_table,
    write_serve_json,
)
from dpnet_runtime.console import EXIT_CHECK_FAILED, make_app, make_progress, stdout_console
from dpnet_runtime.errors import OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.outputs import check_report_outputs

__all__ = ["PROGRAM", "app"]

PROGRAM: Final = "dpnet-bench serve"
_DEFAULTS = ServeBenchOptions(artifacts=Path("out"))

app = make_app(name=PROGRAM)


@app.command()
def serve(
    model: Annotated[
        Path, typer.Option(help="the export directory the server runs (in-process row)")
    ],
    url: Annotated[str, typer.Option(help="the server's URL")] = _DEFAULTS.url,
    requests: Annotated[int, typer.Option(help="timed requests per level")] = _DEFAULTS.requests,
    concurrency: Annotated[str, typer.Option(help="client threads per level")] = ",".join(
        str(level) for level in _DEFAULTS.concurrency
    ),
    shots: Annotated[int, typer.Option(help="K support pairs")] = _DEFAULTS.shots,
    warmup_requests: Annotated[int, typer.Option(help="untimed requests first")] = _DEFAULTS.warmup,
    threads: Annotated[
        int | None, typer.Option(help="in-process CPU threads (default: all)")
    ] = None,
    seed: Annotated[int, typer.Option(help="episode seed")] = _DEFAULTS.seed,
    wait_s: Annotated[
        float, typer.Option(help="wait this long for the server to be ready")
    ] = _DEFAULTS.wait_s,
    server: Annotated[
        str, typer.Option(help="how the server was started (recorded in the report)")
    ] = _DEFAULTS.server_command,
    server_pid: Annotated[
        int | None,
        typer.Option(help="PID of the dpnet-serve process here: report CPU per request by process"),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="file holding the server's token (else $DPNET_SERVE_TOKEN)"),
    ] = None,
    idle_s: Annotated[
        float, typer.Option(help="with --server-pid: seconds of idle CPU measured first")
    ] = _DEFAULTS.idle_s,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """Load a running dpnet-serve at concurrency 1, 4, 16 next to an in-process Predictor."""
    check_report_outputs(json_path, markdown, {"--model": [model], "--token-file": [token_file]})
    options = ServeBenchOptions(
        artifacts=model,
        url=url,
        requests=requests,
        concurrency=_levels(concurrency),
        shots=shots,
        warmup=warmup_requests,
        threads=threads,
        seed=seed,
        wait_s=wait_s,
        server_command=server,
        server_pid=server_pid,
        idle_s=idle_s,
        token_file=token_file,
    )
    with make_progress() as progress:
        report = run_serve_bench(options, progress_advancer(progress))
    stdout_console.print(render_serve_table(report))
    stdout_console.print(
        render_gates(report.targets, report.check_failed, EXIT_CHECK_FAILED), highlight=False
    )
    if json_path is not None:
        write_serve_json(report, json_path)
    if markdown is not None:
        command = f"{PROGRAM} {shlex.join(sys.argv[2:])}"
        atomic_write_text(markdown, render_serve_markdown(report, command))
    if report.check_failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(level) for level in text.split(","))
    except ValueError as exc:
        raise OptionError(
            f"--concurrency must be client counts separated by commas (1,4,16), got {text!r}"
        ) from exc
