"""The support store: memory and folder stores keep support sets bit for bit; a folder store
survives a reopen, refuses another export's classes, stays readable when a write is killed, and
changes nothing, in memory or on disk, when it cannot be written (read-only, full disk)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dpnet_runtime import SupportSet
from dpnet_runtime.errors import DpnetError, IncompatibleModelError, InputError
from dpnet_serve.api_errors import StoreWriteError
from dpnet_serve.store import INDEX_FILE, ClassInfo, DirectoryStore, MemoryStore, SupportStore

from .conftest import unwritable

EXPORT = "sha-of-checkpoint:beta"


def _support(seed: int, shots: int = 2, scales: int = 1) -> SupportSet:
    rng = np.random.default_rng(seed)
    feeds = tuple(
        {
            "support_cos_feats": rng.standard_normal((1, shots, 8, 5, 5), dtype=np.float32),
            "support_fg": (rng.random((1, shots, 5, 5)) > 0.5).astype(np.float32),
            "prototypes": rng.standard_normal((1, shots, 4), dtype=np.float32),
        }
        for _ in range(scales)
    )
    return SupportSet(shots=shots, feeds=feeds)


def _info(name: str, key: str, shots: int = 2) -> ClassInfo:
    return ClassInfo(name=name, key=key, shots=shots, encode_ms=1.5, created="2026-01-01T00:00:00")


def _assert_same(got: SupportSet | None, want: SupportSet) -> None:
    assert got is not None and got.shots == want.shots and len(got.feeds) == len(want.feeds)
    for got_feed, want_feed in zip(got.feeds, want.feeds, strict=True):
        assert set(got_feed) == set(want_feed)
        for name, value in want_feed.items():
            assert got_feed[name].dtype == value.dtype
            np.testing.assert_array_equal(got_feed[name], value)


@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SupportStore:
    if request.param == "memory":
        return MemoryStore()
    return DirectoryStore(tmp_path / "store", EXPORT)


def test_put_get_load_replace_delete(store: SupportStore) -> None:
    cat, dog = _support(0), _support(1, shots=1, scales=2)
    assert store.put(_info("cat", "k1"), cat) is None
    assert store.put(_info("dog", "k2", shots=1), dog) is None
    assert [info.name for info in store.classes()] == ["cat", "dog"]
    assert store.get("cat") == _info("cat", "k1") and store.get("bird") is None
    _assert_same(store.load("k1"), cat)
    _assert_same(store.load("k2"), dog)
    # Replacing gives a new key; the old key's support set is gone.
    new_cat = _support(2)
    assert store.put(_info("cat", "k3"), new_cat) == _info("cat", "k1")
    assert store.load("k1") is None
    _assert_same(store.load("k3"), new_cat)
    assert store.delete("dog") == _info("dog", "k2", shots=1)
    assert store.delete("dog") is None and store.load("k2") is None
    assert [info.name for info in store.classes()] == ["cat"]


def test_folder_store_survives_a_reopen_bit_for_bit(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    first = DirectoryStore(folder, EXPORT)
    cat, dog = _support(0), _support(1, scales=2)
    first.put(_info("cat", "k1"), cat)
    first.put(_info("dog", "k2"), dog)
    first.put(_info("cat", "k3"), cat)
    first.delete("dog")
    reopened = DirectoryStore(folder, EXPORT)
    assert reopened.classes() == [_info("cat", "k3")]
    _assert_same(reopened.load("k3"), cat)
    # One file per class plus the index; replaced and deleted classes leave no file behind.
    assert sorted(path.name for path in folder.iterdir()) == ["index.json", "k3.npz"]


def test_folder_of_another_export_or_a_broken_index_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    DirectoryStore(folder, EXPORT).put(_info("cat", "k1"), _support(0))
    with pytest.raises(IncompatibleModelError, match="holds classes encoded by another export"):
        DirectoryStore(folder, "another-export")
    (folder / INDEX_FILE).write_text("{not json")
    with pytest.raises(DpnetError, match=r"support store index .* is unreadable"):
        DirectoryStore(folder, EXPORT)
    with pytest.raises(InputError, match="is a file; give a folder"):
        DirectoryStore(folder / INDEX_FILE, EXPORT)


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from dpnet_runtime import SupportSet
    from dpnet_serve.store import ClassInfo, DirectoryStore

    def support(seed):
        rng = np.random.default_rng(seed)
        return SupportSet(shots=1, feeds=({"x": rng.standard_normal((1, 1, 64, 64, 64))},))

    store = DirectoryStore(Path(sys.argv[1]), "export")
    store.put(ClassInfo("cat", "k1", 1, 1.0, "t"), support(0))

    write_bytes = Path.write_bytes

    def half_then_hang(self, data):
        # Stands for a process killed in the middle of writing a class file (.<key>.npz.*.tmp).
        if ".npz." not in self.name:
            return write_bytes(self, data)
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
        print("half written", flush=True)
        time.sleep(600)

    Path.write_bytes = half_then_hang
    store.put(ClassInfo("dog", "k2", 1, 1.0, "t"), support(1))
    """
)


def test_a_class_write_killed_half_way_leaves_the_store_readable(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "half written"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    leftovers = [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written class file, under its temporary name
    store = DirectoryStore(folder, "export")
    assert [info.name for info in store.classes()] == ["cat"]
    rng = np.random.default_rng(0)
    _assert_same(
        store.load("k1"),
        SupportSet(shots=1, feeds=({"x": rng.standard_normal((1, 1, 64, 64, 64))},)),
    )
    assert store.load("k2") is None
    # The store goes on: the interrupted class can be written again.
    store.put(_info("dog", "k3", shots=1), _support(5, shots=1))
    _assert_same(DirectoryStore(folder, "export").load("k3"), _support(5, shots=1))
    assert json.loads((folder / INDEX_FILE).read_text())["export_id"] == "export"


def _listing(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("target", ["folder", "index"])
def test_a_store_that_cannot_be_written_changes_nothing(tmp_path: Path, target: str) -> None:
    folder = tmp_path / "store"
    store = DirectoryStore(folder, EXPORT)
    cat, dog = _support(0), _support(1)
    store.put(_info("cat", "k1"), cat)
    store.put(_info("dog", "k2"), dog)
    before = _listing(folder)
    if target == "index" and os.geteuid() != 0:
        pytest.skip("an unwritable index beside a writable folder needs chattr (root)")
    with unwritable(folder if target == "folder" else folder / INDEX_FILE):
        with pytest.raises(StoreWriteError, match=r"cannot be written .*; nothing changed"):
            store.put(_info("bird", "k3"), _support(2))
        with pytest.raises(StoreWriteError):
            store.put(_info("cat", "k4"), _support(3))  # a replace keeps the old class
        with pytest.raises(StoreWriteError):
            store.delete("dog")
        assert [info.name for info in store.classes()] == ["cat", "dog"]
        assert store.get("cat") == _info("cat", "k1") and store.get("bird") is None
        _assert_same(store.load("k1"), cat)
        _assert_same(store.load("k2"), dog)
        assert store.load("k3") is None and store.load("k4") is None
    assert _listing(folder) == before  # no new class file, no temporary file left
    reopened = DirectoryStore(folder, EXPORT)
    assert reopened.classes() == store.classes()
    # Once writable again, the store goes on.
    store.delete("dog")
    assert [info.name for info in DirectoryStore(folder, EXPORT).classes()] == ["cat"]


_FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from dpnet_runtime import SupportSet
    from dpnet_serve.api_errors import StoreWriteError
    from dpnet_serve.store import ClassInfo, DirectoryStore

    store = DirectoryStore(Path(sys.argv[1]), "export")
    small = SupportSet(shots=1, feeds=({"x": np.ones((1, 1, 4, 4), np.float32)},))
    store.put(ClassInfo("cat", "k1", 1, 1.0, "t"), small)
    # No file may grow past 64 KiB from here on: the kernel fails the write (EFBIG), as a
    # full disk fails it (ENOSPC).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    big = SupportSet(shots=1, feeds=({"x": np.ones((1, 1, 256, 256), np.float32)},))
    try:
        store.put(ClassInfo("dog", "k2", 1, 1.0, "t"), big)
    except StoreWriteError as exc:
        print("refused:", exc)
    print("classes:", [info.name for info in store.classes()])
    """
)


def test_a_full_disk_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(folder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: the class store cannot be written (file too large)")
    assert lines[1] == "classes: ['cat']"
    assert sorted(path.name for path in folder.iterdir()) == ["index.json", "k1.npz"]
    assert [info.name for info in DirectoryStore(folder, "export").classes()] == ["cat"]
