"""What ``dpnet-serve`` is asked to run: the model, the HTTP address, batching and the store.

Ray-free, so that ``dpnet-serve --help`` and a bad flag need no Ray installed. The CLI's flags are
kebab-case twins of these fields; the defaults live here only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from dpnet_runtime.errors import OptionError

__all__ = ["APP_NAME", "ServeOptions"]

APP_NAME: Final = "dpnet"
_LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServeOptions:
    """How to serve a DPNet export.

    Args:
        model: export directory (``dpnet-export onnx --out``), readable on every Ray node.
        host: HTTP address of Ray Serve's proxy (``127.0.0.1``: this machine only).
        port: HTTP port.
        address: Ray cluster to join (``auto``, ``HOST:PORT`` of its head, ``ray://HOST:PORT``);
            ``None`` starts a local, loopback-only Ray inside this process.
        replicas: query-head replicas (each holds its own cache of support sets).
        max_batch: most queries of one class that one query-graph call segments together.
        batch_wait_ms: how long a replica waits for more queries before running a batch.
        threads: ONNX Runtime threads per operator in each replica; ``None``: this
            machine's cores divided by ``replicas``.
        backend: runtime backend, ``ort`` or ``trt``.
        precision: a precision of the backend's rows of ``contract.FORMATS``; ``None``: the
            most faithful one present (as ``Predictor.open``).
        store: folder that keeps registered classes across restarts; ``None``: memory only.
        max_shots: most support pairs a class may have.
        max_image_pixels: largest accepted image (height x width); larger ones get HTTP 413.
    """

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    replicas: int = 1
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    threads: int | None = None
    backend: str = "ort"
    precision: str | None = None
    store: Path | None = None
    max_shots: int = 5
    max_image_pixels: int = 4096 * 4096

    def __post_init__(self) -> None:
        for name in ("replicas", "max_batch", "max_shots", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"threads must be at least 1, got {self.threads}")
        if self.batch_wait_ms < 0:
            raise OptionError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise OptionError(f"port must be 0..65535, got {self.port}")

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
        return port.isdigit() and host in _LOOPBACK_HOSTS

    @property
    def replica_threads(self) -> int:
        """ONNX Runtime threads per operator of each replica (``threads`` or the default)."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.replicas)

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"
