"""Atomic file writes, sets of files swapped together, and file hashing.

Every artifact dpnet writes (checkpoints, ONNX graphs, engines, sidecars, results, masks) goes
through this module. A file's bytes land in a temporary file in the destination's folder, are
fsynced, then renamed over the destination, so a crash leaves the old file or the new one,
never a truncated one. :func:`atomic_write_files` does the same for a set of files that belong
together (the graphs of one export, an engine and its sidecar): if any write or rename fails,
every file of the earlier set is put back as it was.

What the destination may be:

* missing, or a regular file: replaced atomically; a replaced file keeps its permission bits,
  a new one gets the usual umask-based mode.
* a symbolic link to a regular file: the link's target is replaced atomically and the link
  stays.
* a character device or a FIFO (``/dev/null``, ``/dev/stdout`` in a pipe, a named pipe): the
  bytes are written through, in one go once they are complete. A stream has no old content
  to protect, and a device node must never be replaced by a file.
* a dangling symbolic link: refused, as GNU ``cp`` does: writing through it would create a
  file wherever the link points.
* a folder, block device or socket: refused.

Refusals are :class:`~dpnet_runtime.errors.InputError`; a system error while writing is a
:class:`~dpnet_runtime.errors.DpnetError` naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dpnet_runtime.errors import DpnetError, InputError

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 20

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class _Destination:
    """Where bytes meant for a path go: ``target`` (a link's target), replaced or streamed."""

    target: Path
    stream: bool
    mode: int | None  # permission bits of the file being replaced, None for a new file


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success its bytes go to ``path`` (see the module docstring).

    Use it for writers that want a file name (``torch.save``, ``onnx.save``). On any exception
    the temporary file is removed and ``path`` is untouched.

    Raises:
        InputError: ``path`` is a folder, a dangling link or another kind of file dpnet does
            not write to.
        DpnetError: the destination folder does not exist or cannot be written.
    """
    destination = _destination(path)
    # A stream's bytes wait in the temp folder: its own folder (/dev) is seldom writable.
    tmp = _temp_file(destination.target, beside=not destination.stream)
    try:
        yield tmp
        if destination.stream:
            _write_through(tmp, destination.target)
        else:
            _seal(tmp, destination.mode)
            _replace(tmp, destination.target)
            _fsync_folder(destination.target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_files(files: Mapping[PathLike, bytes], remove: Iterable[PathLike] = ()) -> None:
    """Replace a set of files together: all of them, or none.

    Every file is first written to a temporary file beside its destination and fsynced; only
    then are they renamed over the destinations, in order. Each replaced file is kept as a
    hard link (a copy where the file system has none) until every rename has succeeded, so an
    error at any step puts the whole earlier set back byte for byte. A process killed during
    the renames can leave some files new and some old: readers of such a set must check that
    its files belong together (dpnet's graphs carry their export's id for that).

    Args:
        files: destination -> bytes; every destination a regular file or a missing one (or a
            link to such a file).
        remove: files of the earlier set that the new set no longer has; removed with the
            same guarantee (a missing one is skipped).

    Raises:
        InputError: a destination that is not a regular file.
        DpnetError: a folder that does not exist, or a write, rename or removal that failed;
            the earlier files are then as they were.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            destination = _destination(path)
            if destination.stream:
                raise InputError(
                    f"cannot write {path} with the files it belongs with: it is not a regular file"
                )
            tmp = _temp_file(destination.target, beside=True)
            staged.append((tmp, destination.target))
            tmp.write_bytes(data)
            _seal(tmp, destination.mode)
    except BaseException as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # from writing or syncing the last staged file
            raise DpnetError(f"cannot write {staged[-1][1]}: {exc.strerror}") from exc
        raise
    _swap(staged, [Path(path) for path in remove])


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _destination(path: PathLike) -> _Destination:
    given = Path(path)
    try:
        info = given.stat()  # follows links
    except FileNotFoundError:
        if given.is_symlink():
            raise InputError(
                f"cannot write {given}: it is a symbolic link to {os.readlink(given)}, which "
                "does not exist; remove the link or write elsewhere"
            ) from None
        return _Destination(given, stream=False, mode=None)
    except OSError as exc:
        raise DpnetError(f"cannot write {given}: {exc.strerror}") from exc
    if stat.S_ISREG(info.st_mode):
        real = Path(os.path.realpath(given))
        if real.is_file() and os.path.samestat(real.stat(), info):
            return _Destination(real, stream=False, mode=stat.S_IMODE(info.st_mode))
        # A /proc/self/fd link to a file without a name (deleted): only writing through works.
        return _Destination(given, stream=True, mode=None)
    if stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode):
        return _Destination(given, stream=True, mode=None)
    kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file, device or FIFO"
    raise InputError(f"cannot write {given}: it is {kind}; give a file name")


def _temp_file(target: Path, beside: bool) -> Path:
    """An empty temporary file for ``target``'s bytes: beside it, or in the system temp folder."""
    folder = target.parent if beside else None
    if folder is not None and not folder.is_dir():
        raise DpnetError(f"cannot write {target}: folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise DpnetError(
            f"cannot write {target}: {exc.strerror} (check the folder's permissions)"
        ) from exc
    os.close(fd)
    return Path(tmp_name)


def _seal(tmp: Path, mode: int | None) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    # mkstemp creates the file owner-only; artifacts get the replaced file's or the usual mode.
    os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)


def _replace(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise DpnetError(f"cannot write {target}: {exc.strerror}") from exc


def _write_through(tmp: Path, target: Path) -> None:
    try:
        with open(tmp, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, _CHUNK)
    except OSError as exc:
        raise DpnetError(f"cannot write {target}: {exc.strerror}") from exc


def _swap(staged: list[tuple[Path, Path]], removals: list[Path]) -> None:
    # (destination, its backup); backup None: the destination did not exist before.
    backups: list[tuple[Path, Path | None]] = []
    current = staged[0][1] if staged else None
    pending = None  # the backup of a file whose rename has not happened yet
    try:
        for tmp, current in staged:
            pending = _link_backup(current) if current.exists() else None
            os.replace(tmp, current)
            backups.append((current, pending))
            pending = None
        for current in removals:
            if current.exists():
                moved = _backup_name(current)
                os.replace(current, moved)
                backups.append((current, moved))
    except BaseException as exc:
        if pending is not None:
            pending.unlink()
        kept = _restore(backups)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        outcome = (
            f"earlier files kept as {', '.join(map(str, kept))}"
            if kept
            else "the earlier files are unchanged"
        )
        raise DpnetError(f"cannot write {current}: {exc.strerror}; {outcome}") from exc
    for _, copy in backups:
        if copy is not None:
            copy.unlink()
    for folder in {target.parent for _, target in staged}:
        _fsync_folder(folder)


def _restore(backups: list[tuple[Path, Path | None]]) -> list[Path]:
    """Put every backup back (last first); returns the backups that could not be put back."""
    kept = []
    for target, backup in reversed(backups):
        try:
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        except OSError:
            if backup is not None:
                kept.append(backup)
    return kept


def _link_backup(target: Path) -> Path:
    backup = _backup_name(target)
    try:
        os.link(target, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(target, backup)
    return backup


def _backup_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.bak")


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
