"""``dpnet-bench``: latency of every backend side by side and mIoU parity against PyTorch.

Thin: it parses flags into :class:`~dpnet_bench.schema.BenchOptions`, calls
:func:`~dpnet_bench.suite.run_suite` with a progress bar and renders the report, which ends with
one line naming every parity gate, its limit, whether it held and the exit code. Exit codes:
0 passed, 1 user error, 2 usage error, 3 a parity gate failed. The CCM micro-benchmark has
its own command, ``python -m dpnet_bench.ccm_micro`` (:mod:`dpnet_bench.ccm_micro`), and so has
the low-precision divergence finder, ``python -m dpnet_bench.localize``; the load test of a
running dpnet-serve is ``dpnet-bench serve`` (:mod:`dpnet_bench.serve_cli`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from dpnet.data.cli_options import (
    CocoSplitOption,
    DataRootOption,
    DatasetOption,
    FoldsOption,
    SkipMissingOption,
    SplitsDirOption,
    ValClassesOption,
    dataset_flags,
)
from dpnet_bench.report import (
    plot_latency,
    progress_advancer,
    render_gates,
    render_markdown,
    render_table,
    render_targets,
    write_csv,
    write_json,
)
from dpnet_bench.schema import BenchOptions
from dpnet_bench.suite import run_suite
from dpnet_runtime.console import (
    EXIT_CHECK_FAILED,
    make_app,
    make_progress,
    run_app,
    stdout_console,
)
from dpnet_runtime.contract import FORMATS, SOURCE_PRECISION
from dpnet_runtime.errors import OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.formats import parity_limits, precisions
from dpnet_runtime.outputs import (
    CSV_FORMATS,
    JSON_FORMATS,
    MARKDOWN_FORMATS,
    PLOT_FORMATS,
    check_file_output,
)

__all__ = ["app", "main"]

_DEFAULTS = BenchOptions(checkpoint=Path("model.pt"))
_GATES = ", ".join(f"{p} {parity_limits(p).max_miou_delta_pt:g}" for p in precisions())
_PIXEL_GATES = ", ".join(
    f"{p} {limit:g}"
    for p in precisions()
    if (limit := parity_limits(p).min_pixel_agreement_pct) is not None
)

app = make_app(name="dpnet-bench")


@app.command()
def bench(
    ckpt: Annotated[Path, typer.Option(help="dpnet checkpoint: the torch reference")],
    model: Annotated[
        Path | None, typer.Option(help="export directory; exported from --ckpt if it has none")
    ] = None,
    dataset: DatasetOption = _DEFAULTS.dataset,
    data_root: DataRootOption = _DEFAULTS.root,
    coco_split: CocoSplitOption = _DEFAULTS.data_options.coco_split,
    splits_dir: SplitsDirOption = _DEFAULTS.data_options.splits_dir,
    skip_missing: SkipMissingOption = _DEFAULTS.data_options.skip_missing,
    val_classes: ValClassesOption = None,
    folds: FoldsOption = _DEFAULTS.data_options.folds,
    fold: Annotated[int, typer.Option(help="test fold 0..3")] = _DEFAULTS.fold,
    shots: Annotated[int, typer.Option(help="K support pairs")] = _DEFAULTS.shots,
    episodes: Annotated[int, typer.Option(help="episodes per backend")] = _DEFAULTS.episodes,
    seed: Annotated[int, typer.Option(help="episode seed")] = _DEFAULTS.seed,
    backends: Annotated[
        str, typer.Option(help=f"comma-separated rows of the format table: {','.join(FORMATS)}")
    ] = ",".join(_DEFAULTS.backends),
    warmup_s: Annotated[float, typer.Option(help="warm-up seconds per path")] = _DEFAULTS.warmup_s,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all)")] = None,
    max_miou_delta: Annotated[
        str,
        typer.Option(
            help="override the mIoU gates, PRECISION=POINTS comma-separated (a bare number: "
            f"{SOURCE_PRECISION}); defaults: {_GATES}"
        ),
    ] = "",
    min_pixel_agreement: Annotated[
        str,
        typer.Option(
            help="override the pixel-agreement gates (%), PRECISION=PERCENT comma-separated; "
            f"defaults: {_PIXEL_GATES}"
        ),
    ] = "",
    json_path: Annotated[Path | None, typer.Option("--json", help="write the report")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="write one row each")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="latency box plots (.png, .svg or .pdf)")
    ] = None,
    markdown: Annotated[Path | None, typer.Option(help="results file (.md)")] = None,
) -> None:
    """Benchmark backends on the same episodes; exit 3 when a parity gate fails.

    `dpnet-bench serve --help`: load-test a running dpnet-serve instead.
    """
    inputs = {"--ckpt": [ckpt], "--model": [model]}
    for option, path, formats in (
        ("--json", json_path, JSON_FORMATS),
        ("--csv", csv_path, CSV_FORMATS),
        ("--plot", plot, PLOT_FORMATS),
        ("--markdown", markdown, MARKDOWN_FORMATS),
    ):
        check_file_output(option, path, formats, inputs, trees={"--data-root": [data_root]})
    options = BenchOptions(
        checkpoint=ckpt,
        artifacts=model,
        dataset=dataset,
        root=data_root,
        data_options=dataset_flags(
            coco_split=coco_split,
            splits_dir=splits_dir,
            skip_missing=skip_missing,
            val_classes=val_classes,
            folds=folds,
        ),
        fold=fold,
        shots=shots,
        episodes=episodes,
        seed=seed,
        backends=tuple(name.strip() for name in backends.split(",") if name.strip()),
        warmup_s=warmup_s,
        threads=threads,
        max_miou_delta=_parse_gates(max_miou_delta, "--max-miou-delta"),
        min_pixel_agreement=_parse_gates(min_pixel_agreement, "--min-pixel-agreement"),
    )
    with make_progress() as progress:
        report = run_suite(options, progress_advancer(progress))
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
    stdout_console.print(
        render_gates(report.targets, report.parity_failed, EXIT_CHECK_FAILED), highlight=False
    )
    if report.parity_failed:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _parse_gates(text: str, option: str) -> dict[str, float]:
    """``"fp16=0.5,int8=2"`` (or a bare number, the FP32 gate) -> precision -> limit."""
    gates = {}
    for part in (part.strip() for part in text.split(",") if part.strip()):
        precision, sep, value = part.rpartition("=")
        try:
            gates[precision.strip() if sep else SOURCE_PRECISION] = float(value)
        except ValueError as exc:
            raise OptionError(
                f"{option} {part!r}: expected PRECISION=NUMBER, e.g. int8=1.5"
            ) from exc
    return gates


def _command(program: str) -> str:
    return f"{program} {shlex.join(sys.argv[1:])}"


def main() -> None:
    """Console entry point of ``dpnet-bench``."""
    run_app(app)
