"""What an atomic write does to what is already at the destination, with real files.

Device nodes, FIFOs, links and folders are made for real (a device node needs root: the test is
skipped, saying so, without it). A set of files written together is checked against real
obstacles: a file name the file system refuses, and an immutable file (``chattr +i``).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from dpnet_runtime.errors import DpnetError, InputError
from dpnet_runtime.fileio import atomic_path, atomic_write_bytes, atomic_write_files

_NULL = os.makedev(1, 3)  # Linux's /dev/null and /dev/full device numbers
_FULL = os.makedev(1, 7)


def _entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def test_a_null_device_is_written_through_and_stays_a_device(tmp_path: Path, char_device) -> None:
    node = char_device(tmp_path / "null", _NULL)
    atomic_write_bytes(node, b"\x89PNG result")
    assert stat.S_ISCHR(node.lstat().st_mode) and node.lstat().st_rdev == _NULL
    assert _entries(tmp_path) == ["null"]


def test_a_full_device_is_a_one_line_error_and_stays_a_device(tmp_path: Path, char_device) -> None:
    node = char_device(tmp_path / "full", _FULL)
    with pytest.raises(DpnetError, match=r"cannot write .*full: No space left on device"):
        atomic_write_bytes(node, b"\x89PNG result")
    assert stat.S_ISCHR(node.lstat().st_mode) and node.lstat().st_rdev == _FULL


def test_a_fifo_gets_the_bytes_and_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    payload = bytes(range(256)) * 1000  # larger than a pipe buffer
    with atomic_path(fifo) as tmp:  # the file-name writer path (torch.save, onnx.save)
        tmp.write_bytes(payload)
    reader.join(timeout=30)
    assert received == [payload]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_link_to_a_file_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "mask.png"
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = tmp_path / "latest.png"
    link.symlink_to(target)
    inode = target.stat().st_ino
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode  # renamed over, not rewritten in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # the replaced file's mode is kept
    assert _entries(tmp_path / "results") == ["mask.png"]  # no temp file left beside it
    assert _entries(tmp_path) == ["latest.png", "results"]


def test_a_dangling_link_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "mask.png"
    link.symlink_to(tmp_path / "elsewhere" / "mask.png")
    with pytest.raises(InputError, match=r"symbolic link to .*elsewhere/mask.png, which does"):
        atomic_write_bytes(link, b"new")
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()
    assert _entries(tmp_path) == ["mask.png"]


def test_a_folder_in_the_way_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mask.png"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="it is a folder"):
        atomic_write_bytes(folder, b"new")
    with pytest.raises(InputError, match="it is a folder"):
        atomic_write_files({tmp_path / "a.bin": b"a", folder: b"b"})
    assert _entries(folder) == ["keep.txt"] and _entries(tmp_path) == ["mask.png"]


def _old_set(folder: Path) -> dict[Path, bytes]:
    files = {folder / name: f"old {name}".encode() for name in ("a.onnx", "b.onnx", "c.onnx")}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def test_a_set_replaces_all_files_and_removes_the_stale_ones(tmp_path: Path) -> None:
    old = _old_set(tmp_path)
    (tmp_path / "a_fp16.onnx").write_bytes(b"old copy")
    atomic_write_files(
        {path: b"new" for path in old}, remove=[tmp_path / "a_fp16.onnx", tmp_path / "gone"]
    )
    assert {path: path.read_bytes() for path in old} == {path: b"new" for path in old}
    assert _entries(tmp_path) == ["a.onnx", "b.onnx", "c.onnx"]


def test_a_set_whose_last_name_is_refused_leaves_the_earlier_set(tmp_path: Path) -> None:
    old = _old_set(tmp_path)
    files: dict[Path, bytes] = {path: b"new" for path in old}
    files[tmp_path / ("x" * 300)] = b"new"  # longer than any file system's name limit
    with pytest.raises(DpnetError, match="File name too long"):
        atomic_write_files(files)
    assert {path: path.read_bytes() for path in old} == old
    assert _entries(tmp_path) == ["a.onnx", "b.onnx", "c.onnx"]  # no temp file left


@pytest.mark.parametrize("obstacle", ["c.onnx", "a_fp16.onnx"], ids=["last-write", "removal"])
def test_a_set_whose_last_rename_fails_puts_the_earlier_set_back(
    tmp_path: Path, obstacle: str, immutable
) -> None:
    old = _old_set(tmp_path)
    (tmp_path / "a_fp16.onnx").write_bytes(b"old copy")
    # An immutable file can be neither replaced nor removed, by root either: the last rename of
    # the new set, or the removal after all three renames, fails.
    with immutable(tmp_path / obstacle), pytest.raises(DpnetError) as raised:
        atomic_write_files(
            {path: f"new {path.name}".encode() for path in old}, remove=[tmp_path / "a_fp16.onnx"]
        )
    expected = f"{obstacle}: Operation not permitted; the earlier files are unchanged"
    assert expected in str(raised.value)
    assert {path: path.read_bytes() for path in old} == old
    assert (tmp_path / "a_fp16.onnx").read_bytes() == b"old copy"
    assert _entries(tmp_path) == ["a.onnx", "a_fp16.onnx", "b.onnx", "c.onnx"]
