"""Start, run and stop dpnet-serve: Ray, Ray Serve's HTTP proxy and the application.

Ray-free at import: Ray and FastAPI are imported by :func:`run_server`, which names the
``serve`` extra when they are missing.

Without an ``address`` the server starts a local Ray whose traffic stays on the loopback
interface (node address 127.0.0.1, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, no dashboard,
usage statistics off); Ray's files go under ``$RAY_TMPDIR`` (default ``/tmp``). With an address
it joins that cluster and, on exit, deletes only its own application; a head addressed as
``127.0.0.1:PORT`` is a cluster of this machine alone, joined with the same loopback settings.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final

from dpnet_runtime.errors import BackendUnavailableError, InputError, one_line
from dpnet_runtime.extras import install_command
from dpnet_serve.options import APP_NAME, ServeOptions
from dpnet_serve.store import open_store

__all__ = ["check_model", "loopback_replica_listeners", "run_server"]

_SERVING_MODULES: Final = ("ray", "ray.serve", "fastapi", "python_multipart", "requests")
_LOCAL_ENVIRONMENT: Final = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's own traffic on 127.0.0.1 only
    "RAY_USAGE_STATS_ENABLED": "0",
    # Task arguments and results up to 2 MiB travel inline in the RPC, not through the object
    # store (Ray's default is 100 KiB): a 321 x 321 query and its mask then cost 7 ms less
    # per request on 2 cores.
    "RAY_max_direct_call_object_size": str(2 << 20),
}
_QUIET: Final = {"enable_access_log": False, "log_level": "WARNING"}
_LOOPBACK_HOOK: Final = "dpnet_serve.server.loopback_replica_listeners"


def check_model(options: ServeOptions) -> str:
    """Open the model once here, so that a bad ``--model`` or option fails before Ray starts.

    Returns:
        The export id (checkpoint sha256 and beta) that a ``--store`` folder must match.

    Raises:
        ModelFileError, BackendUnavailableError, InputError: as :meth:`Predictor.open`;
        InputError also when ``max_batch`` exceeds the graph's batch bound.
        IncompatibleModelError: the ``--store`` folder holds classes of another export.
    """
    from dpnet_serve.app import open_predictor

    with open_predictor(options) as predictor:
        export_id = predictor.info.export_id
        bound = predictor.max_batch
    if bound is not None and options.max_batch > bound:
        raise InputError(
            f"--max-batch {options.max_batch} exceeds the graph's batch bound {bound}; pass "
            f"--max-batch {bound} or rebuild the engine with a larger --batch-range"
        )
    open_store(options.store, export_id)
    return export_id


def run_server(options: ServeOptions, report: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, then stop everything this call started.

    Args:
        options: what to serve and where.
        report: receives one line per step (starting, the URL once ready, stopping).

    Raises:
        BackendUnavailableError: Ray Serve, FastAPI or python-multipart is not installed.
        ModelFileError, InputError, IncompatibleModelError: see :func:`check_model`.
    """
    if options.on_loopback:
        for name, value in _LOCAL_ENVIRONMENT.items():
            os.environ.setdefault(name, value)  # before Ray is imported: it reads them once
    ray, serve = _import_serving()
    export_id = check_model(options)
    from dpnet_serve.app import build_app

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
            http_options={"host": options.host, "port": options.port}, logging_config=_QUIET
        )
        serve.run(
            build_app(options, export_id), name=APP_NAME, route_prefix="/", logging_config=_QUIET
        )
        report(f"dpnet-serve: serving {options.url} (API docs: {options.url}/docs)")
        _wait_for_stop_signal()
        report("stopping")
    finally:
        if options.local:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()


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
    loopback = {
        "_node_ip_address": "127.0.0.1",
        "runtime_env": {"worker_process_setup_hook": _LOOPBACK_HOOK},
    }
    if not options.local:
        return {"address": options.address, **(loopback if options.on_loopback else {}), **quiet}
    # Logical CPUs: every replica reserves its threads, so a small machine still fits them all.
    reserved = options.replica_threads * (options.replicas + 1)
    return {
        "include_dashboard": False,
        "num_cpus": max(os.cpu_count() or 1, reserved),
        **loopback,
        **quiet,
    }


def loopback_replica_listeners() -> None:
    """Ray worker setup hook: Serve replicas listen on 127.0.0.1, not on every interface.

    Ray Serve 2.60 starts an inter-deployment gRPC server in every replica bound to ``[::]:0``
    with no setting to change it (ray-project/ray#64544); a local dpnet-serve binds it to the
    loopback address like the rest of its local Ray. Should Ray rename the function, the
    server still runs and the loopback test fails.
    """
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:
        return

    def bind_loopback(server: Any, address: str) -> int:
        port: int = bind(server, address.replace("[::]:", "127.0.0.1:"))
        return port

    replica.add_port_to_grpc_server = bind_loopback


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
