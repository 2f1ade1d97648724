"""What ``dpnet-serve`` is asked to run: the model, the HTTP address, batching, the store, the
access rules and the limits.

Ray-free, so that ``dpnet-serve --help`` and a bad flag need no Ray installed. The CLI's flags
are kebab-case twins of these fields, and so are the ``key=value`` arguments of the Serve
application builder (``serve run dpnet_serve.app:app model=DIR``) and the ``args`` of a Serve
config file; the defaults live here only.

The access token is never a field: it is read from ``token_file`` or from the environment
variable :data:`TOKEN_ENV` (:func:`read_token`), so that no config file or command line holds it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from dpnet_runtime.errors import InputError, OptionError

__all__ = [
    "APP_NAME",
    "LOOPBACK_HOSTS",
    "MIN_TOKEN_CHARS",
    "TOKEN_ENV",
    "ServeOptions",
    "is_loopback_host",
    "options_from_args",
    "read_token",
]

APP_NAME: Final = "dpnet"
TOKEN_ENV: Final = "DPNET_SERVE_TOKEN"
MIN_TOKEN_CHARS: Final = 16
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeOptions:
    """How to serve a DPNet export.

    Args:
        model: export directory (``dpnet-export onnx --out``), readable on every Ray node.
        host: HTTP address of Ray Serve's proxy (``127.0.0.1``: this machine only). Any other
            address needs a token.
        port: HTTP port.
        address: Ray cluster to join (``auto``, ``HOST:PORT`` of its head, ``ray://HOST:PORT``);
            ``None`` starts a local, loopback-only Ray inside this process.
        replicas: query-head replicas (each holds its own cache of support sets); with
            ``max_replicas`` the number autoscaling starts from.
        min_replicas: fewest query-head replicas autoscaling keeps (``max_replicas`` set).
        max_replicas: most query-head replicas; set, Serve autoscales the query heads between
            ``min_replicas`` and ``max_replicas`` on ``target_ongoing_requests``.
        target_ongoing_requests: queries per query-head replica autoscaling aims at.
        max_batch: most queries of one class that one query-graph call segments together.
        batch_wait_ms: how long a replica waits for more queries before running a batch.
        threads: ONNX Runtime threads per operator in each replica; ``None``: this
            machine's cores divided by the (most) query-head replicas.
        backend: runtime backend, ``ort`` or ``trt``.
        precision: a precision of the backend's rows of ``contract.FORMATS``; ``None``: the
            most faithful one present (as ``Predictor.open``).
        store: folder that keeps registered classes across restarts; ``None``: memory only.
            Only the ingress (on the Ray head node) reads and writes it.
        max_shots: most support pairs a class may have.
        max_image_pixels: largest accepted image (height x width); larger ones get HTTP 413.
        token_file: file whose first line is the bearer token clients must send; ``None``:
            the environment variable ``DPNET_SERVE_TOKEN``, or no token (loopback only).
        public_read: with a token, let clients without it list classes and segment (writes
            still need it).
        allowed_hosts: ``Host`` header values the server answers (``*``: any); by default
            the loopback names, which also defeats DNS rebinding.
        max_body_bytes: largest request body; a larger ``Content-Length`` gets 413 before
            any of the body is read.
        request_timeout_s: most time one request may take, upload included (Ray Serve's
            ``request_timeout_s``; the server answers JSON 408/504 first).
        keep_alive_timeout_s: idle keep-alive connections are closed after this long.
        max_ongoing_requests: requests the ingress works on at once; more get 503.
        max_queued_requests: queries waiting for a query-head replica; more get 503 with
            ``Retry-After``.
        drain_timeout_s: on SIGTERM, how long requests in flight may take to finish while new
            ones get 503.
        metrics_port: port of Ray's Prometheus endpoint (local Ray only); ``None``: Ray picks.
    """

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    threads: int | None = None
    backend: str = "ort"
    precision: str | None = None
    store: Path | None = None
    max_shots: int = 5
    max_image_pixels: int = 4096 * 4096
    token_file: Path | None = None
    public_read: bool = False
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_body_bytes: int = 64 * 1024 * 1024
    request_timeout_s: float = 60.0
    keep_alive_timeout_s: int = 5
    max_ongoing_requests: int = 512
    max_queued_requests: int = 64
    drain_timeout_s: float = 30.0
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        at_least_one = (
            "replicas", "max_batch", "max_shots", "max_image_pixels", "max_body_bytes",
            "max_ongoing_requests", "max_queued_requests", "keep_alive_timeout_s",
        )  # fmt: skip
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("threads", "min_replicas", "max_replicas"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "min_replicas" else 1):
                raise OptionError(f"{name} must be at least 1, got {value}")
        for name in ("batch_wait_ms", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise OptionError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("request_timeout_s", "target_ongoing_requests"):
            if getattr(self, name) <= 0:
                raise OptionError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise OptionError(f"{name} must be 0..65535, got {value}")
        if self.min_replicas is not None and self.max_replicas is None:
            raise OptionError("min_replicas needs max_replicas (autoscaling between the two)")
        if self.max_replicas is not None and not (
            (self.min_replicas or 0) <= self.replicas <= self.max_replicas
        ):
            raise OptionError(
                f"autoscaling needs min_replicas <= replicas <= max_replicas, got "
                f"{self.min_replicas or 0} <= {self.replicas} <= {self.max_replicas}"
            )
        if not self.allowed_hosts:
            raise OptionError("allowed_hosts is empty: give host names, or * for any")

    @property
    def local(self) -> bool:
        """True when dpnet-serve starts its own Ray (no ``address``)."""
        return self.address is None

    @property
    def on_loopback(self) -> bool:
        """True when all of Ray runs on this machine's loopback interface: a local Ray, or a
        cluster whose head is given as ``127.0.0.1:PORT`` or ``localhost:PORT`` (a head that
        listens there cannot be joined from another machine)."""
        if self.address is None:
            return True
        host, _, port = self.address.rpartition(":")
        return port.isdigit() and host in LOOPBACK_HOSTS

    @property
    def autoscaling(self) -> bool:
        """True when Serve autoscales the query heads (``max_replicas`` set)."""
        return self.max_replicas is not None

    @property
    def replica_threads(self) -> int:
        """ONNX Runtime threads per operator of each replica (``threads`` or the default)."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // (self.max_replicas or self.replicas))

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(options: ServeOptions, environment: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: the first line of ``token_file``, else ``$DPNET_SERVE_TOKEN``, else
    ``None`` (no token: the server then refuses any address but loopback).

    Raises:
        InputError: the file cannot be read, or the token is shorter than
            :data:`MIN_TOKEN_CHARS` characters or holds whitespace.
    """
    variables = os.environ if environment is None else environment
    if options.token_file is not None:
        try:
            lines = options.token_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--token-file {options.token_file} cannot be read ({exc})") from exc
        token, origin = (lines[0].strip() if lines else ""), f"--token-file {options.token_file}"
    elif variables.get(TOKEN_ENV):
        token, origin = variables[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS or any(char.isspace() for char in token):
        raise InputError(
            f"the token in {origin} must be at least {MIN_TOKEN_CHARS} characters without "
            "spaces; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def options_from_args(args: Mapping[str, Any]) -> ServeOptions:
    """:class:`ServeOptions` from a Serve application's ``args``: strings from
    ``serve run dpnet_serve.app:app model=DIR replicas=2``, or typed values from a config file.

    Keys are the field names (``max_batch``; ``max-batch`` is accepted too). Lists are
    comma-separated strings or sequences; booleans ``true``/``false``/``1``/``0``.

    Raises:
        OptionError: an unknown key, a value of the wrong type, or no ``model``.
    """
    fields = {field.name: field for field in dataclasses.fields(ServeOptions)}
    hints = typing.get_type_hints(ServeOptions)
    values: dict[str, Any] = {}
    for raw_key, value in args.items():
        key = raw_key.replace("-", "_")
        if key not in fields:
            raise OptionError(
                f"unknown dpnet-serve argument {raw_key!r}; known: {', '.join(sorted(fields))}"
            )
        values[key] = _coerce(key, value, hints[key])
    if "model" not in values:
        raise OptionError("dpnet-serve needs model=DIR (the export directory)")
    return ServeOptions(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    optional = type(None) in typing.get_args(hint) and isinstance(hint, types.UnionType)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    try:
        if hint is bool:
            return _boolean(value)
        if hint is Path:
            return Path(value)
        if typing.get_origin(hint) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if hint in (int, float) and isinstance(value, bool):
            raise ValueError("a boolean")
        return hint(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"dpnet-serve argument {key}={value!r}: not a {_name(hint)}") from exc


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
