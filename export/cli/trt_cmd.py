"""``dpnet-export trt``: build an FP32/FP16/INT8 TensorRT engine, print the trtexec command, or
adopt the engine trtexec built."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpnet_runtime.console import stderr_console, stdout_console
from dpnet_runtime.contract import EPISODE, SOURCE_PRECISION
from dpnet_runtime.formats import precision_help, precisions

__all__ = ["command"]

# Printed commands target this major when TensorRT is not installed here (the current one).
_DEFAULT_TARGET_TENSORRT = "11"


def command(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="The export folder (dpnet-export onnx --out): the engine is built from the "
            "graph of --precision's row and written beside it.",
        ),
    ],
    precision: Annotated[
        str,
        typer.Option(help=f"{' | '.join(precisions('trt'))}: {precision_help('trt')}."),
    ] = SOURCE_PRECISION,
    graph: Annotated[
        str,
        typer.Option(
            help="The graph to build: episode (the engine dpnet_runtime opens), or support / "
            "query (Triton plans, with --out)."
        ),
    ] = EPISODE,
    weak_typing: Annotated[
        bool,
        typer.Option(
            help="TensorRT 10 fallback: a lower precision from dpnet.onnx with its BuilderFlag "
            "(FP16: the builder may then run the CCM in FP16)."
        ),
    ] = False,
    tf32: Annotated[
        bool, typer.Option(help="Allow TF32 in FP32 layers (off: it flips CCM ArgMax ties).")
    ] = False,
    shots_range: Annotated[str, typer.Option(help="K profile min:opt:max.")] = "1:1:5",
    batch_range: Annotated[
        str, typer.Option(help="B profile min:opt:max (8 covers dpnet-serve's --max-batch).")
    ] = "1:1:8",
    workspace: Annotated[str, typer.Option(help="Builder workspace limit (4G, 512M).")] = "4G",
    timing_cache: Annotated[
        Path | None, typer.Option(help="Timing-cache file, read and updated.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Engine file [default: the row's, DIR/dpnet.engine, DIR/dpnet_fp16.engine...]."
        ),
    ] = None,
    rebuild: Annotated[bool, typer.Option(help="Ignore a cached engine.")] = False,
    device: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    print_trtexec: Annotated[
        bool, typer.Option(help="Print the equivalent trtexec command and exit.")
    ] = False,
    adopt: Annotated[
        Path | None,
        typer.Option(
            help="An engine trtexec built with --print-trtexec's command (same options): check "
            "it and write its .engine.json sidecar instead of building."
        ),
    ] = None,
) -> None:
    """Build a TensorRT engine and its .engine.json sidecar from an exported ONNX graph."""
    from dpnet_export.engine_adopt import adopt_engine
    from dpnet_export.onnx_to_engine import (
        EngineBuildOptions,
        installed_tensorrt_version,
        onnx_to_engine,
        onnx_to_trtexec,
        parse_shape_range,
        parse_workspace,
    )

    options = EngineBuildOptions(
        model_dir=model,
        out_path=adopt or out,
        precision=precision,
        graph=graph,
        weak_typing=weak_typing,
        tf32=tf32,
        batch=parse_shape_range(batch_range),
        shots=parse_shape_range(shots_range),
        workspace_bytes=parse_workspace(workspace),
        timing_cache=timing_cache,
        rebuild=rebuild,
        device=device,
    )
    if print_trtexec:
        version = installed_tensorrt_version()
        if version is None:
            stderr_console.print(
                f"TensorRT is not installed: command for TensorRT {_DEFAULT_TARGET_TENSORRT}"
            )
        target = version or _DEFAULT_TARGET_TENSORRT
        stdout_console.print(onnx_to_trtexec(options, tensorrt_version=target), markup=False)
        return
    if adopt is not None:
        result = adopt_engine(options)
        verb = "adopted"
    else:
        result = onnx_to_engine(options, progress=_progress)
        verb = "reused" if result.reused else "built"
    sidecar = result.sidecar
    stdout_console.print(
        f"{verb} {result.engine_path} ({sidecar.precision}, TensorRT {sidecar.tensorrt_version}, "
        f"{sidecar.gpu_name}); sidecar {result.sidecar_path}",
        highlight=False,
        soft_wrap=True,
    )


def _progress(line: str) -> None:
    stderr_console.print(line, markup=False, highlight=False)
