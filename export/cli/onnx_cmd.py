"""``dpnet-export onnx``: a checkpoint -> ``dpnet.onnx`` and the support/query pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dpnet_runtime.console import stderr_console, stdout_console

__all__ = ["command"]


def command(
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", help="Checkpoint written by dpnet-train (dpnet-checkpoint format)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for the graphs; created if missing, files replaced."),
    ] = Path("out"),
    size: Annotated[
        int | None,
        typer.Option(
            help="Input side H = W baked into the graphs (default: the checkpoint's input size)."
        ),
    ] = None,
    max_shots: Annotated[
        int | None,
        typer.Option(
            "--max-shots", help="Largest K the graphs accept; K is dynamic over 1..K (default: 5)."
        ),
    ] = None,
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="Also write *_fp16.onnx mixed-precision copies (CCM, L2 norms, z-score, "
            "argmax stay FP32; FP32 inputs and outputs), for a strongly typed TensorRT build.",
        ),
    ] = False,
    beta: Annotated[
        float | None,
        typer.Option(
            help="Discriminator threshold baked into the graphs "
            "(default: the checkpoint config's beta_test, 0.2)."
        ),
    ] = None,
    raw_input: Annotated[
        bool,
        typer.Option(
            "--raw-input",
            help="Take uint8 RGB images [B,K,H,W,3] / [B,H,W,3] and uint8 masks; "
            "normalise inside the graph.",
        ),
    ] = False,
) -> None:
    """Export a DPNet checkpoint to ONNX graphs that follow the dpnet I/O contract.

    Writes dpnet.onnx: supports + query -> logits, mask, pseudo_count, confidence.

    Writes dpnet_support.onnx / dpnet_query.onnx: encode supports once, segment many queries.

    Batch B and shots K are dynamic axes; the image size is fixed. Lint with dpnet-export check.

    Example: dpnet-export onnx --ckpt runs/fold0/best.pt --out out/ --fp16
    """
    from dpnet_export.torch_to_onnx import ExportOptions, export_onnx

    # The defaults live in ExportOptions alone; importing it here would slow down --help.
    shots = {} if max_shots is None else {"max_shots": max_shots}
    options = ExportOptions(size=size, fp16=fp16, beta=beta, raw_input=raw_input, **shots)
    result = export_onnx(ckpt, out, options, progress=lambda message: stderr_console.log(message))
    table = Table(title=f"dpnet-export onnx: {result.out_dir} ({result.seconds:.1f} s)")
    table.add_column("file")
    table.add_column("size (MB)", justify="right")
    for path in result.files:
        table.add_row(path.name, f"{path.stat().st_size / 1e6:.1f}")
    stdout_console.print(table)
    stdout_console.print(
        f"input {result.input_size} x {result.input_size}, shots 1..{options.max_shots}, "
        f"beta {result.beta}, checkpoint sha256 {result.checkpoint_sha256[:12]}"
    )
