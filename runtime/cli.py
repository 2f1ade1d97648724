"""dpnet-segment: segment query images from support image/mask pairs with exported graphs.

dpnet-segment --model out/ --support cat1.jpg:cat1.png --query q.jpg --out mask.png
dpnet-segment --model out/ --support cat1.jpg:cat1.png --query photos/ --out masks/ \\
    --labels truth/ --json iou.json --sheet sheet.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpnet_runtime.backends.base import thread_options
from dpnet_runtime.batch import SegmentReport, SegmentRequest, iou_summary, segment_files
from dpnet_runtime.console import make_app, make_progress, run_app, stderr_console, stdout_console
from dpnet_runtime.errors import OptionError
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.formats import precisions, runtime_backends
from dpnet_runtime.masks import mask_rules_help
from dpnet_runtime.outputs import JSON_FORMATS, check_file_output, names_folder
from dpnet_runtime.queries import expand_queries
from dpnet_runtime.sheet import NO_OBJECT

__all__ = ["app", "main"]

_PRECISIONS = tuple(dict.fromkeys(p for b in runtime_backends() for p in precisions(b)))

app = make_app(
    name="dpnet-segment",
    help="Segment query images with a DPNet export, from a few annotated support images.",
)


# The mask table is data (dpnet_runtime.masks): --help, the docs and dpnet-serve show the same.
_HELP = f"""Segment every query from the support pairs; the support set is encoded once.

Nothing is written over or into an input (the ground truth, a support, a folder of queries, the
model): such an --out is refused.

Mask files (--support and --labels) by their values:

\b
{mask_rules_help()}
"""


@app.command(help=_HELP)
def command(
    model: Annotated[
        Path, typer.Option(help="Export directory (dpnet-export onnx --out) or graph.")
    ],
    support: Annotated[
        list[str],
        typer.Option(help="Support pair; repeat for K shots.", metavar="IMAGE:MASK"),
    ],
    query: Annotated[
        list[str],
        typer.Option(
            help="Query image, folder or quoted glob ('photos/*.jpg'); repeatable.", metavar="PATH"
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Where the masks go (object 255, background 0): a folder (masks/, created) "
            "receives NAME_mask.png per query; a file (.png, .bmp, .tif) the mask of one query."
        ),
    ],
    overlay: Annotated[
        Path | None,
        typer.Option(
            help="Object tinted red: a picture (.png, .jpg...) with a file --out, a folder "
            "(NAME_overlay.png; may be --out itself) with a folder --out."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Folder of ground-truth masks NAME_mask.png or NAME.png: IoU per image and mean."
        ),
    ] = None,
    class_id: Annotated[
        int | None,
        typer.Option(
            help="Mask files are label maps (VOC/COCO): N = object, 255 = ignore, rest background."
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every query's result and IoU as JSON.")
    ] = None,
    sheet: Annotated[
        Path | None,
        typer.Option(
            help="Contact sheet picture: supports, each query, prediction, ground truth, "
            "with a title, a colour legend and the IoU."
        ),
    ] = None,
    class_name: Annotated[
        str | None, typer.Option(help="What the object is (the sheet's title).")
    ] = None,
    backend: Annotated[
        str, typer.Option(help=f"Runtime backend: {' or '.join(runtime_backends())}.")
    ] = "ort",
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"Which precision of the export to run: {', '.join(_PRECISIONS)} (default: "
            "the most faithful one present; the run says which)."
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per operator (ort; TensorRT has none to set).", min=1),
    ] = None,
) -> None:
    """Segment every query from the support pairs (the help text is ``_HELP``)."""
    folder = names_folder(out)
    request = SegmentRequest(
        supports=tuple(_split_pair(pair) for pair in support),
        queries=expand_queries(query),
        out=None if folder else out, out_dir=out if folder else None, overlay=overlay,
        labels=labels, class_id=class_id, sheet=sheet, class_name=class_name,
    )  # fmt: skip
    check_file_output("--json", json_path, JSON_FORMATS, {**request.inputs(), "--model": [model]})
    options = thread_options(backend, threads)
    with make_progress(transient=True) as progress:
        task = progress.add_task("segmenting", total=len(request.queries), status="")
        report = segment_files(
            model,
            request,
            backend=backend,
            precision=precision,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            **options,
        )
    _print(report, request)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")


def _print(report: SegmentReport, request: SegmentRequest) -> None:
    # What was written goes to stderr, so `--out /dev/stdout` gets the PNG alone; the IoU
    # table and mean, the command's results, stay on stdout.
    model = f"model {report.format_name} ({report.precision})"  # which row ran: precision auto
    if request.out is not None:
        result = report.results[0]
        iou = "" if result.iou_pct is None else f", IoU {result.iou_pct:.1f}"
        iou = f", {NO_OBJECT}, none predicted" if result.no_object else iou
        stderr_console.print(
            f"wrote {result.mask} ({result.object_pixels} object pixels of {result.pixels}, "
            f"pseudo_count {result.pseudo_count}{iou}; {model})",
            highlight=False,
        )
    else:
        if report.mean_iou_pct is not None:
            table = Table(title=f"IoU per query (%), {len(request.supports)}-shot")
            table.add_column("query", no_wrap=True)
            table.add_column("IoU", justify="right")
            for result in report.results:
                score = NO_OBJECT if result.iou_pct is None else f"{result.iou_pct:.1f}"
                table.add_row(result.query.name, score)
            stdout_console.print(table)
        stderr_console.print(
            f"wrote {len(report.results)} masks to {request.out_dir} ({model})", highlight=False
        )
    if report.pooled_iou_pct is not None and len(report.results) > 1:
        stdout_console.print(iou_summary(report), highlight=False)
    if report.sheet is not None:
        stderr_console.print(f"wrote {report.sheet}", highlight=False)


def _split_pair(pair: str) -> tuple[Path, Path]:
    # rpartition keeps a Windows drive letter ("C:\\img.png:C:\\mask.png") in the image part.
    image, sep, mask = pair.rpartition(":")
    if not sep or not image or not mask:
        raise OptionError(f"--support {pair!r} must be IMAGE:MASK, e.g. cat.jpg:cat_mask.png")
    return Path(image), Path(mask)


def main() -> None:
    """Console-script entry point."""
    run_app(app)
