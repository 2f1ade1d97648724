"""dpnet-serve: few-shot segmentation as an HTTP service on Ray Serve.

dpnet-serve --model out/ [--port 8000] [--replicas 2] [--store classes/]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.formats import precisions
from dpnet_serve.options import ServeOptions
from dpnet_serve.server import run_server

__all__ = ["app", "main"]

_DEFAULTS = ServeOptions(model=Path("out"))

app = make_app(
    name="dpnet-serve",
    help="Serve a DPNet export over HTTP: register classes once, segment many images.",
)


@app.command()
def command(
    model: Annotated[Path, typer.Option(help="Export directory (dpnet-export onnx --out).")],
    host: Annotated[str, typer.Option(help="HTTP address (0.0.0.0: every interface).")] = (
        _DEFAULTS.host
    ),
    port: Annotated[int, typer.Option(help="HTTP port.")] = _DEFAULTS.port,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto, HOST:PORT of its head or ray://HOST:PORT; default: "
            "a local Ray."
        ),
    ] = _DEFAULTS.address,
    replicas: Annotated[int, typer.Option(help="Query-head replicas.")] = _DEFAULTS.replicas,
    max_batch: Annotated[
        int, typer.Option(help="Most queries of a class per query-graph call.")
    ] = _DEFAULTS.max_batch,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a replica waits to fill a batch (ms).")
    ] = _DEFAULTS.batch_wait_ms,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per operator in each replica (default: cores / replicas)."),
    ] = _DEFAULTS.threads,
    backend: Annotated[str, typer.Option(help="Runtime backend: ort or trt.")] = _DEFAULTS.backend,
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(precisions())}: the export's files of that precision (default: "
            "the most faithful one present)."
        ),
    ] = _DEFAULTS.precision,
    store: Annotated[
        Path | None, typer.Option(help="Folder that keeps registered classes across restarts.")
    ] = _DEFAULTS.store,
    max_shots: Annotated[int, typer.Option(help="Most support pairs per class.")] = (
        _DEFAULTS.max_shots
    ),
    max_image_pixels: Annotated[
        int, typer.Option(help="Largest accepted image, height x width (larger: HTTP 413).")
    ] = _DEFAULTS.max_image_pixels,
) -> None:
    """Serve MODEL until Ctrl-C or SIGTERM; prints the URL once ready."""
    options = ServeOptions(
        model=model,
        host=host,
        port=port,
        address=address,
        replicas=replicas,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        threads=threads,
        backend=backend,
        precision=precision,
        store=store,
        max_shots=max_shots,
        max_image_pixels=max_image_pixels,
    )
    run_server(options, lambda line: stdout_console.print(line, highlight=False))


def main() -> None:
    """Console-script entry point."""
    run_app(app)
