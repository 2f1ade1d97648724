"""Atomic writes: the old or the new file, never a partial one, with the usual file mode."""

from __future__ import annotations

import os
import stat

import pytest

from dpnet_runtime.errors import DpnetError
from dpnet_runtime.fileio import atomic_path, atomic_write_bytes, sha256_bytes, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert sha256_file(target) == sha256_bytes(b"new")


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_written_file_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DpnetError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "a.bin", b"x")
