"""What every request passes before a route sees it, and the answer when it does not.

:class:`RequestGuard` is ASGI middleware on the ingress's FastAPI app. From the request line
and headers alone, before one byte of the body is read (:func:`check_request`):

1. ``/healthz`` and ``/readyz`` always pass (probes carry neither token nor a public host name).
2. A draining server (SIGTERM) answers 503 ``draining``.
3. The ``Host`` header must be in ``--allowed-hosts`` (loopback names by default): a page on
   another site that resolves its own name to 127.0.0.1 (DNS rebinding) is refused.
4. A browser request from another origin (``Origin`` unlike ``Host``) is refused: there is no
   CORS, so no web page can drive the API with a visitor's browser.
5. Without a token the server answers loopback clients only.
6. With a token, writes (register, delete) need ``Authorization: Bearer <token>``, and so do
   reads unless ``--public-read``.
7. A body needs a ``Content-Length`` no larger than ``--max-body-bytes`` (any method: Ray
   Serve's proxy reads a body as it arrives, whether a route wants it or not).
8. At most ``--max-ongoing-requests`` requests are worked on at once; more get 503 with
   ``Retry-After``.

Then the route runs under a deadline of ``--request-timeout-s`` (408 when the body had not
all arrived, 504 otherwise), and any exception no route handler answered becomes a JSON 500
that quotes an id from the server's log, never the exception.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from dpnet_serve.api_errors import error_body, status_of
from dpnet_serve.options import ServeOptions, is_loopback_host

__all__ = [
    "PUBLIC_PATHS",
    "RETRY_AFTER_S",
    "AccessPolicy",
    "GuardState",
    "Refusal",
    "RequestGuard",
    "check_request",
    "install",
    "send_error",
]

PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_S: Final = 1
_WRITE_PATH: Final = re.compile(r"^/classes/[^/]+/?$")
_WRITE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

logger = logging.getLogger(__name__)

Headers = tuple[tuple[bytes, bytes], ...]
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


@dataclass(frozen=True)
class AccessPolicy:
    """The rules :func:`check_request` applies (see the module docstring)."""

    token: str | None
    public_read: bool
    allowed_hosts: frozenset[str]
    max_body_bytes: int
    request_timeout_s: float
    max_ongoing_requests: int

    @classmethod
    def from_options(cls, options: ServeOptions, token: str | None) -> AccessPolicy:
        """The policy ``options`` ask for, with the token :func:`read_token` found."""
        return cls(
            token=token,
            public_read=options.public_read,
            allowed_hosts=frozenset(host.lower().strip("[]") for host in options.allowed_hosts),
            max_body_bytes=options.max_body_bytes,
            request_timeout_s=options.request_timeout_s,
            max_ongoing_requests=options.max_ongoing_requests,
        )


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of the route's: an error code, its line and extra headers."""

    code: str
    message: str
    headers: Headers = ()


def check_request(
    policy: AccessPolicy, scope: Scope, *, draining: bool, ongoing: int
) -> Refusal | None:
    """Apply the rules to an HTTP request's scope; ``None`` lets it through. Pure.

    Args:
        policy: the rules.
        scope: the ASGI scope (``method``, ``path``, ``headers``, ``client``).
        draining: the server is shutting down.
        ongoing: requests being worked on now (this one not counted).
    """
    path, method = scope["path"], scope["method"]
    if path in PUBLIC_PATHS:
        return None
    retry = ((b"retry-after", str(RETRY_AFTER_S).encode()),)
    if draining:
        return Refusal(
            "draining", "the server is shutting down; retry elsewhere or later",
            (*retry, (b"connection", b"close")),
        )  # fmt: skip
    headers = _headers(scope)
    host = _host_name(headers.get("host", ""))
    if "*" not in policy.allowed_hosts and host not in policy.allowed_hosts:
        shown = host[:80] or "(none)"
        return Refusal(
            "forbidden_host",
            f"Host {shown!r} is not served here; start dpnet-serve with --allowed-hosts "
            f"{shown} to allow it",
        )
    origin = headers.get("origin")
    if origin is not None and origin.partition("://")[2] != headers.get("host", ""):
        return Refusal(
            "forbidden_origin",
            "requests from another origin are refused (this server has no CORS); call it "
            "from a server, or from a page it serves",
        )
    refusal = _check_credentials(policy, scope, headers, path, method)
    if refusal is not None:
        return refusal
    refusal = _check_length(policy, headers)
    if refusal is not None:
        return refusal
    if ongoing >= policy.max_ongoing_requests:
        return Refusal(
            "overloaded",
            f"the server is working on {ongoing} requests, its limit "
            "(--max-ongoing-requests); retry after Retry-After",
            retry,
        )
    return None


def _check_credentials(
    policy: AccessPolicy, scope: Scope, headers: dict[str, str], path: str, method: str
) -> Refusal | None:
    if policy.token is None:
        client = scope.get("client") or ("", 0)
        if not is_loopback_host(str(client[0])):
            return Refusal(
                "forbidden_client",
                "this server has no token, so it answers this machine only; start it with "
                "--token-file to serve others",
            )
        return None
    writes = method in _WRITE_METHODS and _WRITE_PATH.match(path) is not None
    if not writes and policy.public_read:
        return None
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), policy.token.encode()
    ):
        return None
    what = "writes" if writes else "requests"
    return Refusal(
        "unauthorized",
        f"{what} need the server's token: send Authorization: Bearer <token>",
        ((b"www-authenticate", b'Bearer realm="dpnet-serve"'),),
    )


def _check_length(policy: AccessPolicy, headers: dict[str, str]) -> Refusal | None:
    # Any method: Serve's proxy reads a body as it arrives, whether a route wants it or not.
    length = headers.get("content-length")
    if length is None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return Refusal(
                "length_required", "uploads need a Content-Length (chunked bodies are refused)"
            )
        return None
    if not length.strip().isdigit():
        return Refusal("invalid_input", "Content-Length is not a number")
    if int(length) > policy.max_body_bytes:
        return Refusal(
            "body_too_large",
            f"the request body is {int(length)} bytes; the server accepts up to "
            f"{policy.max_body_bytes} (--max-body-bytes)",
            ((b"connection", b"close"),),
        )
    return None


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}


def _host_name(host: str) -> str:
    """``Host`` without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def send_error(send: Send, code: str, message: str, headers: Headers = ()) -> None:
    """Answer an error as JSON (:func:`~dpnet_serve.api_errors.error_body`)."""
    body = error_body(code, message)
    start = {
        "type": "http.response.start",
        "status": status_of(code),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


Observer = Callable[[Scope, int, float], None]


class GuardState:
    """What one ingress replica's guard knows: the policy, the drain flag, the requests in
    flight, and who to tell about each finished request (the metrics)."""

    def __init__(self, policy: AccessPolicy, observer: Observer | None = None) -> None:
        self.policy = policy
        self.observer = observer
        self.draining = False
        self.ongoing = 0


class _Exchange:
    """One request's progress: whether its body has all arrived and its answer has begun."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.body_complete = False
        self.status: int | None = None

    async def receive(self) -> Message:
        message: Message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_complete = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


# The guard of this process's ingress replica. Ray Serve runs a frozen copy of the FastAPI
# app, built before the replica starts, so the replica cannot hand its state to the middleware
# instance; it installs it here, in the one module both import.
_installed: GuardState | None = None


def install(state: GuardState) -> None:
    """Make ``state`` the guard of every :class:`RequestGuard` in this process."""
    global _installed
    _installed = state


class RequestGuard:
    """ASGI middleware: :func:`check_request`, the deadline, and the catch-all 500.

    It applies the :class:`GuardState` the ingress installed (:func:`install`); until then it
    answers 503 ``not_ready``.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _installed
        if state is None:
            await send_error(send, "not_ready", "the server is starting")
            return
        began = time.perf_counter()
        refusal = check_request(state.policy, scope, draining=state.draining, ongoing=state.ongoing)
        exchange = _Exchange(receive, send)
        if refusal is not None:
            await send_error(exchange.send, refusal.code, refusal.message, refusal.headers)
        else:
            counted = scope["path"] not in PUBLIC_PATHS
            state.ongoing += counted
            try:
                await self._answer(state, scope, exchange)
            finally:
                state.ongoing -= counted
        if state.observer is not None and exchange.status is not None:
            asyncio.get_running_loop().call_soon(
                state.observer, scope, exchange.status, time.perf_counter() - began
            )

    async def _answer(self, state: GuardState, scope: Scope, exchange: _Exchange) -> None:
        try:
            async with asyncio.timeout(state.policy.request_timeout_s) as deadline:
                await self.app(scope, exchange.receive, exchange.send)
        except TimeoutError:
            if not deadline.expired():
                raise
            if exchange.status is None:
                code = "timeout" if exchange.body_complete else "request_timeout"
                what = "answer" if exchange.body_complete else "request body"
                await send_error(
                    exchange.send,
                    code,
                    f"the {what} took longer than {state.policy.request_timeout_s} s "
                    "(--request-timeout-s)",
                    ((b"connection", b"close"),),
                )
        except Exception as exc:  # every route handler has had its chance: a bug, logged
            error_id = secrets.token_hex(4)
            logger.error(
                "internal error %s on %s %s", error_id, scope["method"], scope["path"],
                exc_info=exc,
            )  # fmt: skip
            if exchange.status is None:
                await send_error(
                    exchange.send,
                    "internal_error",
                    f"internal error {error_id}; the server's log has the details",
                )
