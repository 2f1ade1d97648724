"""Every error dpnet-serve answers: a stable code, its HTTP status, and the JSON body.

An error body is ``{"error": "<one line>", "code": "<code>"}``, the same for every route and
for the checks that run before a route (token, ``Host``, body size): clients branch on
``code``, people read ``error``. The line never holds a traceback, a path of the server or a
process id: internal failures are logged on the server with an id the answer quotes.

:data:`ERROR_CODES` is the one list of codes; the docs' troubleshooting page lists the same
(a test compares them). Ray-free, so the client and the docs test can import it.
"""

from __future__ import annotations

import json
from typing import Final

from dpnet_runtime.errors import DpnetError, InputError

__all__ = [
    "ERROR_CODES",
    "ApiError",
    "ClassExistsError",
    "ClassNotFoundError",
    "StoreWriteError",
    "error_body",
    "error_code",
    "status_of",
]

# code -> (HTTP status, when it is answered)
ERROR_CODES: Final[dict[str, tuple[int, str]]] = {
    "invalid_input": (400, "a bad mask, shot count or form field"),
    "invalid_image": (
        400,
        "an image or mask the server cannot decode, or one whose metadata "
        "inflates beyond the server's decode budget (a decompression bomb)",
    ),
    "unauthorized": (401, "no bearer token, or a wrong one"),
    "forbidden_host": (403, "a Host header outside --allowed-hosts"),
    "forbidden_origin": (403, "a browser request from another origin (no CORS)"),
    "forbidden_client": (403, "a client off this machine, while the server has no token"),
    "not_found": (404, "an unknown route"),
    "class_not_found": (404, "an unknown class"),
    "method_not_allowed": (405, "a route that exists, with another method"),
    "request_timeout": (408, "the request body did not arrive within --request-timeout-s"),
    "class_exists": (409, "the class exists; register with ?replace=true"),
    "length_required": (411, "an upload without Content-Length"),
    "body_too_large": (413, "a request body over --max-body-bytes"),
    "image_too_large": (413, "an image over --max-image-pixels"),
    "malformed_request": (422, "a missing field or a bad class name"),
    "internal_error": (500, "a server-side failure, logged with the id the answer quotes"),
    "overloaded": (503, "too many requests at once or queued; retry after Retry-After"),
    "unavailable": (503, "a replica was lost; retry after Retry-After"),
    "draining": (503, "the server is shutting down; retry elsewhere or later"),
    "not_ready": (503, "/readyz: a deployment is not healthy"),
    "timeout": (504, "the answer took longer than --request-timeout-s"),
    "store_failed": (507, "the class store could not be written; nothing changed"),
}


class ApiError(DpnetError):
    """An error answered with a given code (``ERROR_CODES``)."""

    def __init__(self, code: str, message: str, *, retry_after_s: int | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class ClassNotFoundError(InputError):
    """No class of that name is registered (HTTP 404)."""


class ClassExistsError(InputError):
    """A class of that name exists and the request did not ask to replace it (HTTP 409)."""


class StoreWriteError(DpnetError):
    """The support store could not be written (read-only, full disk); nothing changed."""


def error_code(exc: BaseException) -> str:
    """The code of a dpnet exception (``internal_error`` for anything else)."""
    if isinstance(exc, ApiError):
        return exc.code
    # Imported here: wire needs PIL, and the code table must load without it.
    from dpnet_serve.wire import OversizedImageError, UndecodableImageError

    kinds: tuple[tuple[type[BaseException], str], ...] = (  # most specific first
        (OversizedImageError, "image_too_large"),
        (UndecodableImageError, "invalid_image"),
        (ClassNotFoundError, "class_not_found"),
        (ClassExistsError, "class_exists"),
        (StoreWriteError, "store_failed"),
        (InputError, "invalid_input"),
    )
    return next((code for kind, code in kinds if isinstance(exc, kind)), "internal_error")


def status_of(code: str) -> int:
    """The HTTP status of an error code."""
    return ERROR_CODES[code][0]


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an error: ``{"error": message on one line, "code": code}``."""
    line = " ".join(message.split())
    return json.dumps({"error": line, "code": code}).encode("utf-8")
