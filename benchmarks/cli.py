"""``dpnet-bench``: latency of every backend side by side and mIoU parity against PyTorch.

Thin: it parses flags into :class:`~dpnet_bench.schema.BenchOptions`, calls
:func:`~dpnet_bench.suite.run_suite` with a progress bar and renders the report. Exit codes:
0 passed, 1 user error, 2 usage error, 3 a parity check failed. ``python -m
dpnet_bench.ccm_micro`` runs the CCM micro-benchmark (:func:`ccm_main`). ``dpnet-bench serve``
load-tests a running dpnet-serve (:func:`serve`; exit 3 when a request failed, a mask was
wrong or the support graph re-ran).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.progress import Progress, TaskID

from dpnet.data.cli_options import CocoSplitOption, DataRootOption, DatasetOption
from dpnet_bench.ccm_micro import (
    CcmOptions,
    ccm_report_to_dict,
    render_ccm_markdown,
    render_ccm_table,
    run_ccm_micro,
)
from dpnet_bench.report import (
    plot_latency,
    render_markdown,
    render_table,
    render_targets,
    write_csv,
    write_json,
)
from dpnet_bench.schema import BenchOptions
from dpnet_bench.serve_load import ServeBenchOptions, run_serve_bench
from dpnet_bench.serve_report import (
    render_serve_markdown,
    render_serve_table,
    write_serve_json,
)
from dpnet_bench.suite import run_suite
from dpnet_runtime.console import (
    EXIT_CHECK_FAILED,
    make_app,
    make_progress,
    run_app,
    stdout_console,
)
from dpnet_runtime.fileio import atomic_write_text

__all__ = ["app", "ccm_app", "ccm_main", "main", "serve_app"]

_DEFAULTS = BenchOptions(checkpoint=Path("model.pt"))
_CCM_DEFAULTS = CcmOptions()
_SERVE_DEFAULTS = ServeBenchOptions(artifacts=Path("out"))
_SERVE_COMMAND: Final = "serve"

app = make_app()
ccm_app = make_app()
serve_app = make_app(name="dpnet-bench serve")


@app.command()
def bench(
    ckpt: Annotated[Path, typer.Option(help="dpnet checkpoint: the torch reference")],
    artifacts: Annotated[
        Path | None, typer.Option(help="export directory; exported from --ckpt if it has none")
    ] = None,
    dataset: DatasetOption = _DEFAULTS.dataset,
    data_root: DataRootOption = _DEFAULTS.root,
    coco_split: CocoSplitOption = _DEFAULTS.coco_split,
    fold: Annotated[int, typer.Option(help="test fold 0..3")] = _DEFAULTS.fold,
    shots: Annotated[int, typer.Option(help="K support pairs")] = _DEFAULTS.shots,
    episodes: Annotated[int, typer.Option(help="episodes per backend")] = _DEFAULTS.episodes,
    seed: Annotated[int, typer.Option(help="episode seed")] = _DEFAULTS.seed,
    backends: Annotated[
        str, typer.Option(help="comma-separated: torch,torch-fp16,ort,ort-fp16,trt")
    ] = ",".join(_DEFAULTS.backends),
    warmup: Annotated[float, typer.Option(help="warm-up seconds per path")] = _DEFAULTS.warmup_s,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    max_miou_delta: Annotated[
        float, typer.Option(help="allowed |mIoU delta| in points, FP32")
    ] = _DEFAULTS.max_miou_delta,
    max_miou_delta_fp16: Annotated[
        float, typer.Option(help="allowed |mIoU delta| in points, FP16")
    ] = _DEFAULTS.max_miou_delta_fp16,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="write one row each")] = None,
    plot: Annotated[Path | None, typer.Option(help="latency box plots (.png)")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """Benchmark backends on the same episodes; exit 3 when a parity check fails.

    `dpnet-bench serve --help`: load-test a running dpnet-serve instead.
    """
    options = BenchOptions(
        checkpoint=ckpt,
        artifacts=artifacts,
        dataset=dataset,
        root=data_root,
        coco_split=coco_split,
        fold=fold,
        shots=shots,
        episodes=episodes,
        seed=seed,
        backends=tuple(name.strip() for name in backends.split(",") if name.strip()),
        warmup_s=warmup,
        threads=threads,
        max_miou_delta=max_miou_delta,
        max_miou_delta_fp16=max_miou_delta_fp16,
    )
    with make_progress() as progress:
        report = run_suite(options, _advance(progress))
    stdout_console.print(render_table(report))
    stdout_console.print(render_targets(report.targets))
    if json_path is not None:
        write_json(report, json_path)
    if csv_path is not None:
        write_csv(report, csv_path)
    if plot is not None:
        plot_latency(report, plot)
    if markdown is not None:
        atomic_write_text(markdown, render_markdown(report, _command("dpnet-bench")))
    if report.parity_failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


@ccm_app.command()
def ccm(
    artifacts: Annotated[
        Path | None, typer.Option(help="export directory whose dpnet.onnx gives the episode time")
    ] = None,
    sides: Annotated[str, typer.Option(help="feature sides")] = ",".join(
        str(side) for side in _CCM_DEFAULTS.sides
    ),
    shots: Annotated[int, typer.Option(help="K")] = _CCM_DEFAULTS.shots,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    repeats: Annotated[int, typer.Option(help="timed runs per size")] = _CCM_DEFAULTS.repeats,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """The CCM's share of an ONNX Runtime episode and its scaling with the feature size."""
    options = CcmOptions(
        episode_graph=None if artifacts is None else artifacts / "dpnet.onnx",
        sides=tuple(int(side) for side in sides.split(",")),
        shots=shots,
        threads=threads,
        repeats=repeats,
    )
    report = run_ccm_micro(options)
    stdout_console.print(render_ccm_table(report))
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(ccm_report_to_dict(report), indent=2) + "\n")
    if markdown is not None:
        command = _command("python -m dpnet_bench.ccm_micro")
        atomic_write_text(markdown, render_ccm_markdown(report, command))


@serve_app.command()
def serve(
    artifacts: Annotated[
        Path, typer.Option(help="the export directory the server runs (in-process row)")
    ],
    url: Annotated[str, typer.Option(help="the server's URL")] = _SERVE_DEFAULTS.url,
    requests: Annotated[
        int, typer.Option(help="timed requests per level")
    ] = _SERVE_DEFAULTS.requests,
    concurrency: Annotated[str, typer.Option(help="client threads per level")] = ",".join(
        str(level) for level in _SERVE_DEFAULTS.concurrency
    ),
    shots: Annotated[int, typer.Option(help="K support pairs")] = _SERVE_DEFAULTS.shots,
    warmup: Annotated[int, typer.Option(help="untimed requests first")] = _SERVE_DEFAULTS.warmup,
    threads: Annotated[
        int | None, typer.Option(help="in-process CPU threads (default: all)")
    ] = None,
    seed: Annotated[int, typer.Option(help="episode seed")] = _SERVE_DEFAULTS.seed,
    wait_s: Annotated[
        float, typer.Option(help="wait this long for the server to be ready")
    ] = _SERVE_DEFAULTS.wait_s,
    server: Annotated[
        str, typer.Option(help="how the server was started (recorded in the report)")
    ] = _SERVE_DEFAULTS.server_command,
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """Load a running dpnet-serve at concurrency 1, 4, 16 next to an in-process Predictor."""
    options = ServeBenchOptions(
        artifacts=artifacts,
        url=url,
        requests=requests,
        concurrency=tuple(int(level) for level in concurrency.split(",")),
        shots=shots,
        warmup=warmup,
        threads=threads,
        seed=seed,
        wait_s=wait_s,
        server_command=server,
    )
    with make_progress() as progress:
        report = run_serve_bench(options, _advance(progress))
    stdout_console.print(render_serve_table(report))
    if json_path is not None:
        write_serve_json(report, json_path)
    if markdown is not None:
        command = _command(f"dpnet-bench {_SERVE_COMMAND}", sys.argv[2:])
        atomic_write_text(markdown, render_serve_markdown(report, command))
    if report.check_failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _advance(progress: Progress) -> Callable[[str, int, int], None]:
    # One bar per row name (backend, or serve level), created on its first report.
    tasks: dict[str, TaskID] = {}

    def advance(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = progress.add_task(name, total=total, status="")
        progress.update(tasks[name], completed=done)

    return advance


def _command(program: str, args: list[str] | None = None) -> str:
    return f"{program} {shlex.join(sys.argv[1:] if args is None else args)}"


def main() -> None:
    """Console entry point of ``dpnet-bench`` (``dpnet-bench serve ...`` runs :func:`serve`)."""
    if sys.argv[1:2] == [_SERVE_COMMAND]:
        run_app(functools.partial(serve_app, prog_name="dpnet-bench serve"), sys.argv[2:])
    run_app(app)


def ccm_main() -> None:
    """Entry point of ``python -m dpnet_bench.ccm_micro``."""
    run_app(ccm_app)
