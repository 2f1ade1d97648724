"""The support store: registered classes and their encoded support sets.

One small interface, :class:`SupportStore`, with two implementations:

- :class:`MemoryStore` (the default): classes live as long as the server.
- :class:`DirectoryStore` (``dpnet-serve --store DIR``): one ``<key>.npz`` file per class
  (its support feeds, the plain numpy arrays of :class:`~dpnet_runtime.SupportSet`) plus
  ``index.json`` (the class list and the export the feeds belong to). Every file is written
  through :mod:`dpnet_runtime.fileio` (temporary file, fsync, rename), the class file before
  the index, so a write killed half-way leaves the previous store readable: at worst a
  temporary or unreferenced ``.npz`` file that the store ignores.

Every change is all or nothing: a write that fails (read-only folder, full disk) raises
:class:`~dpnet_serve.api_errors.StoreWriteError` and leaves the store, in memory and on disk,
as it was. The in-memory class list changes only once the index on disk has.

A store serves one writer (the server's single ingress replica); several servers sharing a
folder on a shared filesystem must not register classes at the same time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from dpnet_runtime import SupportSet
from dpnet_runtime.errors import DpnetError, IncompatibleModelError, InputError
from dpnet_runtime.fileio import atomic_write_bytes, atomic_write_text
from dpnet_serve.api_errors import StoreWriteError

__all__ = [
    "INDEX_FILE",
    "STORE_FORMAT",
    "ClassInfo",
    "DirectoryStore",
    "MemoryStore",
    "SupportStore",
    "open_store",
]

INDEX_FILE: Final = "index.json"
STORE_FORMAT: Final = "dpnet-support-store/1"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassInfo:
    """A registered class.

    Attributes:
        name: the class name in URLs (``/classes/{name}``).
        key: unique id of this registration; a class registered again gets a new key, so
            replicas never serve a replaced support set from their cache.
        shots: K, the number of support pairs.
        encode_ms: time the support graph took to encode them.
        created: registration time, ISO 8601 UTC.
    """

    name: str
    key: str
    shots: int
    encode_ms: float
    created: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields (the HTTP answer and the index entry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClassInfo:
        """The inverse of :meth:`to_json`."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


class SupportStore(Protocol):
    """Where registered classes live; implementations need not be thread-safe."""

    def get(self, name: str) -> ClassInfo | None:
        """The class called ``name``, or ``None``."""
        ...

    def classes(self) -> list[ClassInfo]:
        """Every class, in registration order."""
        ...

    def put(self, info: ClassInfo, support: SupportSet) -> ClassInfo | None:
        """Add a class, replacing one of the same name; returns the replaced class or ``None``.

        Raises:
            StoreWriteError: nothing was stored (and a replaced class is still there).
        """
        ...

    def delete(self, name: str) -> ClassInfo | None:
        """Remove a class; returns it, or ``None`` when there was none.

        Raises:
            StoreWriteError: nothing was removed.
        """
        ...

    def load(self, key: str) -> SupportSet | None:
        """The support set of the registration ``key``, or ``None`` when it is gone."""
        ...


class MemoryStore:
    """Classes in this process's memory (gone when the server stops)."""

    def __init__(self) -> None:
        self._infos: dict[str, ClassInfo] = {}
        self._supports: dict[str, SupportSet] = {}

    def get(self, name: str) -> ClassInfo | None:
        return self._infos.get(name)

    def classes(self) -> list[ClassInfo]:
        return list(self._infos.values())

    def put(self, info: ClassInfo, support: SupportSet) -> ClassInfo | None:
        old = self.delete(info.name)
        self._infos[info.name] = info
        self._supports[info.key] = support
        return old

    def delete(self, name: str) -> ClassInfo | None:
        old = self._infos.pop(name, None)
        if old is not None:
            del self._supports[old.key]
        return old

    def load(self, key: str) -> SupportSet | None:
        return self._supports.get(key)


class DirectoryStore:
    """Classes in a folder: ``index.json`` plus one ``<key>.npz`` per class.

    Args:
        folder: the store folder; created when missing.
        export_id: the export the server runs (checkpoint sha256 and beta); a folder written
            for another export is refused, since its support features would be meaningless.

    Raises:
        InputError: ``folder`` is a file.
        IncompatibleModelError: the folder holds classes of another export.
        DpnetError: the index is unreadable.
    """

    def __init__(self, folder: Path, export_id: str) -> None:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--store {folder} is a file; give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._export_id = export_id
        self._infos = {info.name: info for info in _read_index(folder / INDEX_FILE, export_id)}

    def get(self, name: str) -> ClassInfo | None:
        return self._infos.get(name)

    def classes(self) -> list[ClassInfo]:
        return list(self._infos.values())

    def put(self, info: ClassInfo, support: SupportSet) -> ClassInfo | None:
        new_file = self._file(info.key)
        _write(new_file, lambda: atomic_write_bytes(new_file, _support_to_npz(support)))
        infos = {name: old for name, old in self._infos.items() if name != info.name}
        infos[info.name] = info
        try:
            self._write_index(infos)
        except StoreWriteError:
            new_file.unlink(missing_ok=True)
            raise
        old = self._infos.get(info.name)
        self._infos = infos
        if old is not None:
            self._remove_file(old.key)
        return old

    def delete(self, name: str) -> ClassInfo | None:
        old = self._infos.get(name)
        if old is None:
            return None
        infos = {other: kept for other, kept in self._infos.items() if other != name}
        self._write_index(infos)
        self._infos = infos
        self._remove_file(old.key)
        return old

    def load(self, key: str) -> SupportSet | None:
        info = next((info for info in self._infos.values() if info.key == key), None)
        if info is None:
            return None
        try:
            return _support_from_npz(self._file(key), info.shots)
        except FileNotFoundError:  # replaced or deleted since the lookup above
            return None

    def _file(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def _write_index(self, infos: dict[str, ClassInfo]) -> None:
        index = {
            "format": STORE_FORMAT,
            "export_id": self._export_id,
            "classes": [info.to_json() for info in infos.values()],
        }
        path = self.folder / INDEX_FILE
        _write(path, lambda: atomic_write_text(path, json.dumps(index, indent=2) + "\n"))

    def _remove_file(self, key: str) -> None:
        # The index no longer names it: a file left behind is ignored, so failing here is fine.
        try:
            self._file(key).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("support store: cannot remove %s (%s)", self._file(key), exc.strerror)


def _write(path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except (OSError, DpnetError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        logger.error("support store: cannot write %s: %s", path, reason)
        raise StoreWriteError(
            f"the class store cannot be written ({_reason(exc)}); nothing changed"
        ) from exc


def _reason(exc: BaseException) -> str:
    # The cause, never the server's path: the message goes to clients.
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError) and cause.errno is not None:
        return os.strerror(cause.errno).lower()
    return "write failed"


def open_store(folder: Path | None, export_id: str) -> SupportStore:
    """A :class:`DirectoryStore` on ``folder``, or a :class:`MemoryStore` for ``None``."""
    return MemoryStore() if folder is None else DirectoryStore(folder, export_id)


def _read_index(path: Path, export_id: str) -> list[ClassInfo]:
    if not path.exists():
        return []
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != STORE_FORMAT:
            raise ValueError(f"format {index.get('format')!r} is not {STORE_FORMAT!r}")
        classes = [ClassInfo.from_json(entry) for entry in index["classes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DpnetError(
            f"support store index {path} is unreadable ({exc}); restore it, or start with "
            "another --store folder"
        ) from exc
    if index.get("export_id") != export_id:
        raise IncompatibleModelError(
            f"support store {path.parent} holds classes encoded by another export "
            f"({index.get('export_id')!r}, this model is {export_id!r}); start with another "
            "--store folder, or register the classes again in an empty one"
        )
    return classes


def _support_to_npz(support: SupportSet) -> bytes:
    # One array per scale and tensor, named "<scale>/<tensor>"; no pickled objects.
    arrays = {
        f"{scale}/{name}": value
        for scale, feed in enumerate(support.feeds)
        for name, value in feed.items()
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _support_from_npz(path: Path, shots: int) -> SupportSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DpnetError(
            f"support file {path} is unreadable ({exc}); register its class again"
        ) from exc
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for full_name, value in arrays.items():
        scale, _, name = full_name.partition("/")
        feeds.setdefault(int(scale), {})[name] = value
    return SupportSet(shots=shots, feeds=tuple(feeds[scale] for scale in sorted(feeds)))
