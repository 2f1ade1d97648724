"""``dpnet-export triton``: an export directory -> a Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpnet_runtime.console import stdout_console
from dpnet_runtime.contract import SOURCE_PRECISION
from dpnet_runtime.extras import install_command
from dpnet_runtime.formats import precisions, runtime_backends

__all__ = ["command"]


def command(
    model: Annotated[
        Path, typer.Option(help="Export directory (dpnet-export onnx --out), with the split pair.")
    ],
    out: Annotated[
        Path, typer.Option(help="Model repository folder to write (created; not in --model).")
    ] = Path("triton_repo"),
    backend: Annotated[
        str,
        typer.Option(
            help=f"{' or '.join(runtime_backends())}: Triton's ONNX Runtime backend serves the "
            "graphs (ort), or TensorRT plans built on the serving GPU (trt)."
        ),
    ] = "ort",
    precision: Annotated[
        str,
        typer.Option(
            help=f"{', '.join(precisions())}: the graphs of that row of the format table "
            "(dpnet-export onnx --precision); with trt, the graphs the plans are built from."
        ),
    ] = SOURCE_PRECISION,
    max_batch: Annotated[int, typer.Option(help="Triton max_batch_size of the graphs.")] = 8,
    queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batching: max_queue_delay_microseconds.")
    ] = 5000,
    instances: Annotated[int, typer.Option(help="Instances of each graph model.")] = 1,
    cpu: Annotated[bool, typer.Option("--cpu", help="KIND_CPU instances (default: GPU).")] = False,
) -> None:
    """Write dpnet_support, dpnet_query (dynamic batching, dynamic K) and the dpnet BLS model.

    Serving the repository needs NVIDIA's Triton container (not on PyPI); see docs/export/triton.md.
    """
    from dpnet_export.onnx_to_triton import TritonOptions, onnx_to_triton

    options = TritonOptions(
        backend=backend,
        precision=precision,
        max_batch=max_batch,
        queue_delay_us=queue_delay_us,
        instances=instances,
        kind="KIND_CPU" if cpu else "KIND_GPU",
    )
    result = onnx_to_triton(model, out, options)
    checked = (
        "checked against Triton's model_config schema"
        if result.validated
        else f"not checked: {install_command('triton')} to check the configs"
    )
    stdout_console.print(f"wrote {result.repo} ({len(result.configs)} models; {checked})")
    for role, _, plan in result.to_build:
        stdout_console.print(
            f"build on the serving GPU: dpnet-export trt --model {model} --graph {role} "
            f"--precision {precision} --out {plan} --batch-range 1:1:{max_batch}",
            markup=False,
            highlight=False,
        )
