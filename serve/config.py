"""Ray Serve's view of a :class:`ServeOptions`: HTTP options and a Serve config file.

``dpnet-serve config --model DIR ... > serve.yaml`` writes :func:`serve_config` as YAML, the
file ``serve run serve.yaml`` and ``serve deploy serve.yaml`` take (and a KubeRay
``RayService``'s ``serveConfigV2``). Its application is :func:`dpnet_serve.app.app` with the
options as ``args``; the token is never in it (``token_file``, or ``$DPNET_SERVE_TOKEN`` where
the application is built).

Ray-free: PyYAML comes with Ray, and is imported only to render.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final

from dpnet_serve.options import APP_NAME, ServeOptions

__all__ = [
    "IMPORT_PATH",
    "PROXY_GRACE_S",
    "http_options",
    "render_serve_config",
    "serve_config",
]

IMPORT_PATH: Final = "dpnet_serve.app:app"
# Serve's proxy gives up this long after the ingress's own deadline: the ingress answers the
# timeout as JSON first, and the proxy only ends what the ingress could not.
PROXY_GRACE_S: Final = 2.0
# Options of the process that starts Ray, not of the application.
_NOT_APP_ARGS: Final = frozenset({"address", "metrics_port"})


def http_options(options: ServeOptions) -> dict[str, Any]:
    """Ray Serve's ``http_options``: address, request timeout and keep-alive timeout."""
    return {
        "host": options.host,
        "port": options.port,
        "request_timeout_s": options.request_timeout_s + PROXY_GRACE_S,
        "keep_alive_timeout_s": options.keep_alive_timeout_s,
    }


def serve_config(options: ServeOptions) -> dict[str, Any]:
    """A Ray Serve config (``ServeDeploySchema``) that runs ``options`` as application
    ``dpnet`` at ``/``; ``args`` hold every option that differs from its default, and
    ``model`` (absolute)."""
    defaults = ServeOptions(model=options.model)
    args: dict[str, Any] = {"model": str(options.model.resolve())}
    for field in dataclasses.fields(ServeOptions):
        value = getattr(options, field.name)
        if field.name in _NOT_APP_ARGS or field.name == "model":
            continue
        if value != getattr(defaults, field.name) or field.name in ("host", "port"):
            args[field.name] = _plain(value)
    application = {"name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH, "args": args}
    return {
        "proxy_location": "HeadOnly",
        "http_options": http_options(options),
        "applications": [application],
    }


def render_serve_config(options: ServeOptions) -> str:
    """:func:`serve_config` as YAML, with a header saying how to use it."""
    import yaml

    header = (
        "# Ray Serve config for dpnet-serve: `serve run serve.yaml` (this machine) or\n"
        "# `serve deploy serve.yaml` (a running cluster). The token is not in this file: set\n"
        "# DPNET_SERVE_TOKEN where the application is built, or give args.token_file.\n"
    )
    return header + yaml.safe_dump(serve_config(options), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, tuple):
        return list(value)
    return value
