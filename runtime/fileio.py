"""Atomic file writes and file hashing.

Every artifact dpnet writes (checkpoints, ONNX graphs, engines, sidecars, results) goes
through :func:`atomic_write`: the bytes land in a temporary file in the destination's folder,
are fsynced, then renamed over the destination, so a crash leaves the old file or the new one,
never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dpnet_runtime.errors import DpnetError

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "sha256_bytes", "sha256_file"]

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Use it for writers that want a file name (``torch.save``, ``onnx.save``). On any exception
    the temporary file is removed and ``path`` is untouched.

    Raises:
        DpnetError: the destination folder does not exist or cannot be written.
    """
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise DpnetError(f"cannot write {target}: folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise DpnetError(
            f"cannot write {target}: {exc.strerror} (check the folder's permissions)"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates the file owner-only; artifacts get the usual umask-based mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_folder(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # The rename itself must reach the disk too, or a power loss can bring the old name back.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
