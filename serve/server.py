"""Start, run and stop dpnet-serve: Ray, Ray Serve's HTTP proxy and the application.

Ray-free at import: Ray and FastAPI are imported by :func:`run_server`, which names the
``serve`` extra when they are missing.

Without an ``address`` the server starts a local Ray whose traffic stays on the loopback
interface (node address 127.0.0.1, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, no dashboard,
usage statistics off); Ray's files go under ``$RAY_TMPDIR`` (default ``/tmp``). With an address
it joins that cluster and, on exit, deletes only its own application; a head addressed as
``127.0.0.1:PORT`` is a cluster of this machine alone, joined with the same loopback settings.

A local Ray is also tuned for a server that shares its cores with the model: every Ray
process costs CPU while idle, so Serve's control loop and metrics exports run less often, task
events (for a dashboard that is not running) are not recorded, and replicas run their code on
their event loop rather than in a thread of their own (:data:`_LOCAL_ENVIRONMENT`).

SIGTERM or SIGINT drains the server before it stops: the ingress answers new requests 503
``draining`` (with ``Connection: close``) while the ones in flight finish, for at least
:data:`DRAIN_NOTICE_S` and at most ``drain_timeout_s``; then Serve and Ray stop.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from dpnet_runtime.errors import BackendUnavailableError, one_line
from dpnet_runtime.extras import install_command
from dpnet_serve.config import http_options
from dpnet_serve.options import APP_NAME, ServeOptions

__all__ = ["DRAIN_NOTICE_S", "run_server"]

DRAIN_NOTICE_S: Final = 2.0

_SERVING_MODULES: Final = ("ray", "ray.serve", "fastapi", "python_multipart", "requests")
_LOCAL_ENVIRONMENT: Final = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's own traffic on 127.0.0.1 only
    "RAY_USAGE_STATS_ENABLED": "0",
    # Task arguments and results up to 2 MiB travel inline in the RPC, not through the object
    # store (Ray's default is 100 KiB): a 321 x 321 query and its mask then cost 7 ms less
    # per request on 2 cores.
    "RAY_max_direct_call_object_size": str(2 << 20),
    # No task events for a state API nobody reads (GCS 15 -> 5 ms/s idle), the dashboard
    # agent's node statistics every minute, the log monitor's scan for new log files every 5 s.
    "RAY_task_events_report_interval_ms": "0",
    "REPORTER_UPDATE_INTERVAL_MS": "60000",
    "LOG_NAME_UPDATE_INTERVAL_S": "5",
}
# Ray Serve settings of the controller and the replicas, set after this process has read its
# own (its handles keep routing from a loop of their own, as a blocking caller needs). Idle CPU
# measured per process on 2 cores: the controller's loop every 1 s instead of 0.1 s (33 -> 14
# ms/s), replicas' metric exports every 1 s. A request's replica code runs on the replica's
# event loop (ONNX Runtime runs in a worker thread anyway), and the ingress routes to the
# query heads from that loop too: two thread hand-overs fewer per query.
_REPLICA_ENVIRONMENT: Final = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
_QUIET: Final = {"enable_access_log": False, "log_level": "WARNING"}

logger = logging.getLogger(__name__)


def run_server(options: ServeOptions, report: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, drain, then stop everything this call started.

    Args:
        options: what to serve and where.
        report: receives one line per step (starting, the URL once ready, draining, stopping).

    Raises:
        BackendUnavailableError: Ray Serve, FastAPI or python-multipart is not installed.
        ModelFileError, InputError, IncompatibleModelError: see
            :func:`dpnet_serve.app.build_app` (all raised before Ray starts).
    """
    if options.on_loopback:
        for name, value in _LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # before Ray is imported: it reads them once
    ray, serve = _import_serving()
    if options.on_loopback:
        for name, value in _REPLICA_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # inherited by the local Ray's workers only
    from dpnet_serve.app import build_app

    application = build_app(options)
    report(f"starting Ray {'locally' if options.local else 'at ' + str(options.address)}")
    try:
        ray.init(**_ray_arguments(options))
    except (ConnectionError, ray.exceptions.AuthenticationError) as exc:
        if options.local:
            raise BackendUnavailableError(f"cannot start a local Ray: {one_line(exc)}") from exc
        raise BackendUnavailableError(
            f"cannot join the Ray cluster at {options.address}: {one_line(exc)}; check --address, "
            "and for a cluster with token authentication set RAY_AUTH_MODE=token and its token "
            "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)"
        ) from exc
    try:
        serve.start(
            proxy_location="HeadOnly", http_options=http_options(options), logging_config=_QUIET
        )
        serve.run(application, name=APP_NAME, route_prefix="/", logging_config=_QUIET)
        report(f"dpnet-serve: serving {options.url} (API docs: {options.url}/docs)")
        _wait_for_stop_signal()
        report("draining")
        _drain(serve, options)
        report("stopping")
    finally:
        if options.local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()


def _drain(serve: ModuleType, options: ServeOptions) -> None:
    """New requests get 503 while the ones in flight finish (bounded by drain_timeout_s)."""
    started = time.monotonic()
    try:
        ingress = serve.get_app_handle(APP_NAME)
        ingress.drain.remote().result(timeout_s=10)
        while (elapsed := time.monotonic() - started) < options.drain_timeout_s:
            if elapsed >= DRAIN_NOTICE_S and ingress.ongoing.remote().result(timeout_s=10) == 0:
                return
            time.sleep(0.1)
        logger.warning("requests still in flight after %s s; stopping", options.drain_timeout_s)
    except Exception as exc:  # a lost ingress cannot drain: stop anyway, and say why
        logger.warning("could not drain the server (%s); stopping", one_line(exc))


def _import_serving() -> tuple[ModuleType, ModuleType]:
    try:
        modules = [importlib.import_module(name) for name in _SERVING_MODULES]
    except ImportError as exc:
        raise BackendUnavailableError(
            f"dpnet-serve needs Ray Serve ({exc.name} is missing): {install_command('serve')}"
        ) from exc
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return modules[0], modules[1]


def _ray_arguments(options: ServeOptions) -> dict[str, Any]:
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    metrics = {} if options.metrics_port is None else {"_metrics_export_port": options.metrics_port}
    loopback = {"_node_ip_address": "127.0.0.1"}
    if not options.local:
        return {"address": options.address, **(loopback if options.on_loopback else {}), **quiet}
    # Logical CPUs: every replica reserves its threads, so a small machine still fits them all.
    reserved = options.replica_threads * (options.max_replicas or options.replicas)
    return {
        "include_dashboard": False,
        "num_cpus": max(os.cpu_count() or 1, reserved),
        **loopback,
        **metrics,
        **quiet,
    }


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    handlers = {
        number: signal.signal(number, lambda *_: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
