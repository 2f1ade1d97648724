"""Client: the Python side of dpnet-serve's HTTP API, numpy in and out.

>>> with Client("http://127.0.0.1:8000", token=token) as client:  # doctest: +SKIP
...     client.register("cat", [image], [mask])  # uint8 [H, W, 3]; [H, W] 0/1/255 or bool
...     mask = client.segment("cat", query)  # uint8 [H, W], 1 = object

Masks are numpy arrays, read here by the array rule of
:func:`dpnet_runtime.masks.decode_mask` exactly as :class:`~dpnet_runtime.Predictor` reads them
(0 / 1 / 255 = ignore, bool, label maps with ``class_id``; same results, same errors, raised
before any upload), then sent as 0/255 PNGs, which the server's file rule reads back unchanged.
Images travel as BMP and masks as PNG (both lossless), so the server sees exactly the caller's
pixels. A Client keeps one HTTP connection open; use one Client per thread.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType, TracebackType
from typing import Any, Self

import numpy as np

from dpnet_runtime.errors import BackendUnavailableError, DpnetError, InputError
from dpnet_runtime.extras import missing_package_message
from dpnet_runtime.preprocess import check_image, check_mask
from dpnet_serve.store import ClassInfo
from dpnet_serve.wire import encode_image, mask_from_png, mask_to_png

__all__ = ["Client"]

_Files = list[tuple[str, tuple[str, bytes, str]]]


class Client:
    """Calls a running dpnet-serve.

    Args:
        url: the server's base URL, as ``dpnet-serve`` prints it.
        token: the server's bearer token (``dpnet-serve --token-file`` or
            ``$DPNET_SERVE_TOKEN``), sent with every request; ``None`` for a server without one.
        timeout_s: seconds to wait for each answer.

    Every method raises :class:`~dpnet_runtime.errors.InputError` when the server answers 4xx
    (the caller's mistake; the message is the server's) and
    :class:`~dpnet_runtime.errors.DpnetError` when it answers 5xx or cannot be reached.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._requests = _import_requests()
        self._session = self._requests.Session()
        if token is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def register(
        self,
        name: str,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        replace: bool = False,
        class_id: int | None = None,
    ) -> ClassInfo:
        """Register class ``name`` from K support pairs; the server encodes them once.

        Args:
            name: letters, digits, ``_``, ``.``, ``-`` (up to 64).
            images: K images ``uint8 [H_k, W_k, 3]`` RGB.
            masks: K masks ``[H_k, W_k]`` as :meth:`dpnet_runtime.Predictor.encode_support`
                takes them: bool, or 0 / 1 / 255 (ignore); class-label maps with ``class_id``.
            replace: replace a class of the same name instead of failing (HTTP 409).
            class_id: the masks are class-label maps: this class is the object, 255 ignore.

        Raises:
            InputError: a bad image or mask (checked here, before any upload, with the
                messages of ``Predictor``), or the server's 4xx.
        """
        files = _support_files(images, masks, class_id)
        params = {"replace": "true"} if replace else None
        answer = self._call("POST", f"/classes/{name}", files=files, params=params)
        return ClassInfo.from_json(answer.json())

    def segment(self, name: str, image: np.ndarray) -> np.ndarray:
        """The mask of ``image`` (``uint8 [H, W, 3]``) for class ``name``: ``uint8 [H, W]`` 0/1."""
        answer = self._call("POST", f"/classes/{name}/segment", files=[_image_file(image)])
        return mask_from_png(answer.content)

    def episode(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        image: np.ndarray,
        *,
        class_id: int | None = None,
    ) -> np.ndarray:
        """Segment ``image`` from K support pairs in one call, storing nothing (masks and
        ``class_id`` as in :meth:`register`)."""
        files = [*_support_files(images, masks, class_id), _image_file(image)]
        return mask_from_png(self._call("POST", "/episode", files=files).content)

    def classes(self) -> list[ClassInfo]:
        """Every registered class."""
        entries = self._call("GET", "/classes").json()["classes"]
        return [ClassInfo.from_json(entry) for entry in entries]

    def info(self, name: str) -> ClassInfo:
        """One registered class."""
        return ClassInfo.from_json(self._call("GET", f"/classes/{name}").json())

    def delete(self, name: str) -> None:
        """Remove class ``name``."""
        self._call("DELETE", f"/classes/{name}")

    def stats(self) -> dict[str, Any]:
        """The server's counters (``GET /stats``)."""
        stats: dict[str, Any] = self._call("GET", "/stats").json()
        return stats

    def ready(self) -> bool:
        """True when every deployment of the server answers (``GET /readyz``)."""
        try:
            answer = self._session.get(f"{self.url}/readyz", timeout=self.timeout_s)
        except self._requests.RequestException:
            return False
        return answer.status_code == 200

    def close(self) -> None:
        """Close the HTTP connection."""
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, **arguments: Any) -> Any:
        try:
            answer = self._session.request(
                method, f"{self.url}{path}", timeout=self.timeout_s, **arguments
            )
        except self._requests.RequestException as exc:
            raise DpnetError(
                f"cannot reach dpnet-serve at {self.url} ({type(exc).__name__}); is it running?"
            ) from exc
        if answer.status_code < 400:
            return answer
        message = f"{method} {path}: HTTP {answer.status_code}: {_error_text(answer)}"
        raise (InputError if answer.status_code < 500 else DpnetError)(message)


def _support_files(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], class_id: int | None
) -> _Files:
    if len(images) != len(masks):
        raise InputError(f"got {len(images)} images but {len(masks)} masks: one mask each")
    files = []
    for shot, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
        files.append(_image_file(image, "images", f"image {shot}"))
        # The array rule, here: sent as it stands, a 0/255 array (255 = ignore in an array)
        # would be read by the server's file rule as 255 = object.
        shape = np.shape(image)
        labels = check_mask(mask, f"support mask {shot}", shape, class_id=class_id)
        files.append(("masks", (f"mask{shot}.png", mask_to_png(labels), "image/png")))
    return files


def _image_file(
    image: np.ndarray, field: str = "image", name: str = "image"
) -> tuple[str, tuple[str, bytes, str]]:
    pixels = encode_image(check_image(image, name))
    return field, (f"{name.replace(' ', '')}.bmp", pixels, "image/bmp")


def _import_requests() -> ModuleType:
    try:
        return importlib.import_module("requests")
    except ImportError as exc:
        raise BackendUnavailableError(
            missing_package_message("requests", "dpnet_serve.Client")
        ) from exc


def _error_text(answer: Any) -> str:
    try:
        body = answer.json()
        return f"{body['error']} [{body['code']}]" if "code" in body else str(body["error"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:200] or answer.reason
