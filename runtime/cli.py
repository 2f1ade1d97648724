"""dpnet-segment: segment a query image from support image/mask pairs with exported graphs.

dpnet-segment --model out/ --support cat1.jpg:cat1.png --query q.jpg --out mask.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.errors import InputError
from dpnet_runtime.predictor import segment_files

__all__ = ["app", "main"]

app = make_app(
    name="dpnet-segment",
    help="Segment a query image with a DPNet export, from a few annotated support images.",
    no_args_is_help=True,
)


@app.command()
def command(
    model: Annotated[
        Path, typer.Option(help="Export directory (dpnet-export onnx --out) or graph.")
    ],
    support: Annotated[
        list[str],
        typer.Option(help="IMAGE:MASK support pair; repeat for K shots (object: 1 or > 127)."),
    ],
    query: Annotated[Path, typer.Option(help="Query image to segment.")],
    out: Annotated[Path, typer.Option(help="Mask PNG to write (object 255, background 0).")],
    overlay: Annotated[
        Path | None, typer.Option(help="Also write the query with the object tinted red.")
    ] = None,
    backend: Annotated[str, typer.Option(help="Runtime backend: ort or trt.")] = "ort",
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, fp16 or int8: which graphs of the export to run "
            "(default: ort fp32, trt dpnet.engine)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per operator (ort backend).", min=1)
    ] = None,
) -> None:
    """Segment QUERY from the support pairs and write the mask PNG."""
    options = {} if threads is None else {"intra_op_threads": threads}
    result = segment_files(
        model,
        [_split_pair(pair) for pair in support],
        query,
        out,
        overlay=overlay,
        backend=backend,
        precision=precision,
        **options,
    )
    stdout_console.print(
        f"wrote {out} ({int(result.mask.sum())} object pixels of {result.mask.size}, "
        f"pseudo_count {result.pseudo_count})",
        highlight=False,
    )


def _split_pair(pair: str) -> tuple[Path, Path]:
    # rpartition keeps a Windows drive letter ("C:\\img.png:C:\\mask.png") in the image part.
    image, sep, mask = pair.rpartition(":")
    if not sep or not image or not mask:
        raise InputError(f"--support {pair!r} must be IMAGE:MASK, e.g. cat.jpg:cat_mask.png")
    return Path(image), Path(mask)


def main() -> None:
    """Console-script entry point."""
    run_app(app)
