"""dpnet-serve: few-shot segmentation as an HTTP service on Ray Serve.

dpnet-serve --model out/ [--port 8000] [--replicas 2] [--store classes/]
dpnet-serve config --model out/ [...] > serve.yaml   # then: serve run / serve deploy serve.yaml

Both take the same options (one signature, :func:`_options`); ``config`` writes the Ray Serve
config file instead of serving.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dpnet_runtime.console import make_app, run_app, stdout_console
from dpnet_runtime.fileio import atomic_write_text
from dpnet_runtime.formats import precisions
from dpnet_runtime.outputs import YAML_FORMATS, check_file_output
from dpnet_serve.options import ServeOptions
from dpnet_serve.server import run_server

__all__ = ["app", "config_app", "main"]

_D = ServeOptions(model=Path("out"))

app = make_app(
    name="dpnet-serve",
    help="Serve a DPNet export over HTTP: register classes once, segment many images. "
    "`dpnet-serve config ...` writes a Ray Serve config file instead.",
)
config_app = make_app(name="dpnet-serve config")


def _options(
    model: Annotated[Path, typer.Option(help="Export directory (dpnet-export onnx --out).")],
    host: Annotated[
        str, typer.Option(help="HTTP address; anything but loopback needs a token.")
    ] = _D.host,
    port: Annotated[int, typer.Option(help="HTTP port.")] = _D.port,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto, HOST:PORT of its head or ray://HOST:PORT; default: "
            "a local Ray."
        ),
    ] = _D.address,
    replicas: Annotated[int, typer.Option(help="Query-head replicas.")] = _D.replicas,
    min_replicas: Annotated[
        int | None, typer.Option(help="Autoscaling: fewest query heads.")
    ] = _D.min_replicas,
    max_replicas: Annotated[
        int | None, typer.Option(help="Autoscaling: most query heads (turns autoscaling on).")
    ] = _D.max_replicas,
    target_ongoing_requests: Annotated[
        float, typer.Option(help="Autoscaling: queries per query head to aim at.")
    ] = _D.target_ongoing_requests,
    max_batch: Annotated[
        int, typer.Option(help="Most queries of a class per query-graph call.")
    ] = _D.max_batch,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long a replica waits to fill a batch (ms).")
    ] = _D.batch_wait_ms,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per operator in each replica (default: cores / replicas)."),
    ] = _D.threads,
    backend: Annotated[str, typer.Option(help="Runtime backend: ort or trt.")] = _D.backend,
    precision: Annotated[
        str | None,
        typer.Option(
            help=f"{', '.join(precisions())}: the export's files of that precision (default: "
            "the most faithful one present)."
        ),
    ] = _D.precision,
    store: Annotated[
        Path | None,
        typer.Option(help="Folder that keeps registered classes across restarts (head node)."),
    ] = _D.store,
    max_shots: Annotated[int, typer.Option(help="Most support pairs per class.")] = _D.max_shots,
    max_image_pixels: Annotated[
        int, typer.Option(help="Largest accepted image, height x width (larger: HTTP 413).")
    ] = _D.max_image_pixels,
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the bearer token (else $DPNET_SERVE_TOKEN)."),
    ] = _D.token_file,
    public_read: Annotated[
        bool, typer.Option(help="With a token: reads and queries need none (writes still do).")
    ] = _D.public_read,
    allowed_hosts: Annotated[
        str, typer.Option(help="Host header values answered, comma-separated (* for any).")
    ] = ",".join(_D.allowed_hosts),
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body (Content-Length); larger: 413 at once.")
    ] = _D.max_body_bytes,
    request_timeout_s: Annotated[
        float, typer.Option(help="Most time per request, upload included (408/504).")
    ] = _D.request_timeout_s,
    keep_alive_timeout_s: Annotated[
        int, typer.Option(help="Idle keep-alive connections close after this long.")
    ] = _D.keep_alive_timeout_s,
    max_ongoing_requests: Annotated[
        int, typer.Option(help="Requests worked on at once; more get 503.")
    ] = _D.max_ongoing_requests,
    max_queued_requests: Annotated[
        int, typer.Option(help="Queries queued for a query head; more get 503 + Retry-After.")
    ] = _D.max_queued_requests,
    drain_timeout_s: Annotated[
        float, typer.Option(help="On SIGTERM, how long requests in flight may take.")
    ] = _D.drain_timeout_s,
    metrics_port: Annotated[
        int | None, typer.Option(help="Port of Ray's Prometheus endpoint (local Ray).")
    ] = _D.metrics_port,
) -> ServeOptions:
    """The command-line options as :class:`ServeOptions` (validated there)."""
    return ServeOptions(
        model=model, host=host, port=port, address=address, replicas=replicas,
        min_replicas=min_replicas, max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests, max_batch=max_batch,
        batch_wait_ms=batch_wait_ms, threads=threads, backend=backend, precision=precision,
        store=store, max_shots=max_shots, max_image_pixels=max_image_pixels,
        token_file=token_file, public_read=public_read,
        allowed_hosts=tuple(host.strip() for host in allowed_hosts.split(",") if host.strip()),
        max_body_bytes=max_body_bytes, request_timeout_s=request_timeout_s,
        keep_alive_timeout_s=keep_alive_timeout_s, max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests, drain_timeout_s=drain_timeout_s,
        metrics_port=metrics_port,
    )  # fmt: skip


def _command(action: Callable[..., None], *extra: inspect.Parameter) -> Callable[..., None]:
    """A command taking :func:`_options`'s flags (plus ``extra`` ones) that calls
    ``action(options, **extra_values)``."""
    base = inspect.signature(_options, eval_str=True).parameters.values()
    parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in base] + list(extra)

    def command(**flags: Any) -> None:
        own = {parameter.name: flags.pop(parameter.name) for parameter in extra}
        action(_options(**flags), **own)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return command


def _serve(options: ServeOptions) -> None:
    run_server(options, lambda line: stdout_console.print(line, highlight=False))


def _write_config(options: ServeOptions, out: Path | None) -> None:
    from dpnet_serve.config import render_serve_config

    inputs = {"--model": [options.model], "--token-file": [options.token_file]}
    check_file_output("--out", out, YAML_FORMATS, inputs, trees={"--store": [options.store]})
    text = render_serve_config(options)
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)


app.command(
    "serve", help="Serve MODEL until Ctrl-C or SIGTERM (draining first); prints the URL once ready."
)(_command(_serve))
config_app.command(
    "config",
    help="Print (or --out) the Ray Serve config file that runs these options: "
    "serve run serve.yaml, or serve deploy serve.yaml on a running cluster.",
)(
    _command(
        _write_config,
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(help="Write the config here, .yaml or .yml (default: stdout)."),
            ],
        ),
    )
)


def main() -> None:
    """Console-script entry point: ``dpnet-serve [config] ...``."""
    if sys.argv[1:2] == ["config"]:
        run_app(config_app, sys.argv[2:])
    run_app(app)
