"""dpnet-segment (a subprocess, a real tiny export) against what stands at --out and --query.

A device node stays a device node (written through, or a one-line error when it is full), a
link to a file keeps pointing at the file it points at, now holding the mask, a link to
``/proc/self/fd/1`` (what ``/dev/stdout`` is; the host's own is never used) in a pipe gets the
PNG, an existing folder at --out receives the masks, a folder in a picture's way and a query
over PIL's pixel limit are one-line errors. Device nodes
need root (skipped, saying so, without it).
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

_FULL = os.makedev(1, 7)  # Linux's /dev/full
_NULL = os.makedev(1, 3)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    image = np.zeros((48, 56, 3), np.uint8)
    image[..., 2] = 200
    mask = np.zeros((48, 56), np.uint8)
    mask[10:30, 12:36] = 1
    image[mask == 1] = (220, 20, 20)
    paths = {name: tmp_path / f"support_{name}.png" for name in ("image", "mask")}
    Image.fromarray(image).save(paths["image"])
    Image.fromarray(mask * 255).save(paths["mask"])
    return paths


def _segment(
    export: Path,
    inputs: dict[str, Path],
    out: str | Path,
    query: Path | None = None,
    sheet: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "dpnet_runtime", "--model", str(export), "--threads", "1",
               "--support", f"{inputs['image']}:{inputs['mask']}",
               "--query", str(query or inputs["image"]), "--out", str(out),
               *(["--sheet", str(sheet)] if sheet else [])]  # fmt: skip
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def _one_error_line(completed: subprocess.CompletedProcess[bytes]) -> str:
    stderr = completed.stderr.decode()
    assert completed.returncode == 1, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: "), stderr
    return stderr


def _is_mask_png(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        return image.size == (56, 48) and set(np.unique(np.asarray(image))) <= {0, 255}


def test_a_full_device_stays_a_device_and_the_error_is_one_line(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path, char_device
) -> None:
    node = char_device(tmp_path / "full", _FULL)
    stderr = _one_error_line(_segment(small_export, inputs, node))
    assert f"cannot write {node}: No space left on device" in stderr
    assert stat.S_ISCHR(node.lstat().st_mode) and node.lstat().st_rdev == _FULL


def test_a_null_device_is_written_through(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path, char_device
) -> None:
    node = char_device(tmp_path / "null", _NULL)
    completed = _segment(small_export, inputs, node)
    assert completed.returncode == 0, completed.stderr.decode()
    assert stat.S_ISCHR(node.lstat().st_mode) and node.lstat().st_rdev == _NULL


def test_a_link_to_stdout_in_a_pipe_gets_the_png(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    # What /dev/stdout is, made in tmp_path: a regression must not replace the host's own link.
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    completed = _segment(small_export, inputs, stdout)
    assert completed.returncode == 0, completed.stderr.decode()
    assert completed.stdout.startswith(b"\x89PNG\r\n\x1a\n") and _is_mask_png(completed.stdout)
    png_end = completed.stdout.index(b"IEND") + 8  # the chunk type and its CRC
    assert completed.stdout[png_end:] == b"", "nothing but the PNG on stdout"
    assert stdout.is_symlink()


def test_a_link_to_a_file_keeps_the_link_and_replaces_the_file(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "mask.png"
    target.write_bytes(b"an older result")
    link = tmp_path / "latest.png"
    link.symlink_to(target)
    completed = _segment(small_export, inputs, link)
    assert completed.returncode == 0, completed.stderr.decode()
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _is_mask_png(target.read_bytes())
    assert sorted(p.name for p in target.parent.iterdir()) == ["mask.png"]


def test_a_dangling_link_at_out_is_a_one_line_error(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "result.png"
    out.symlink_to(tmp_path / "missing" / "mask.png")
    stderr = _one_error_line(_segment(small_export, inputs, out))
    assert "which does not exist" in stderr
    assert out.is_symlink()


def test_a_folder_at_out_receives_the_masks_and_one_in_a_files_way_is_an_error(
    small_export: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    # --out names a folder when it is one (docs/cli.md), whatever its name looks like.
    out = tmp_path / "result.png"
    out.mkdir()
    completed = _segment(small_export, inputs, out)
    assert completed.returncode == 0, completed.stderr.decode()
    assert [path.name for path in out.iterdir()] == ["support_image_mask.png"]
    # A picture option names a file: a folder standing there is refused, and stays.
    sheet = tmp_path / "sheet.png"
    (sheet / "keep").mkdir(parents=True)
    stderr = _one_error_line(_segment(small_export, inputs, tmp_path / "m.png", None, sheet))
    assert f"--sheet {sheet} is a folder; give a file name" in stderr
    assert sorted(path.name for path in sheet.iterdir()) == ["keep"]
    assert not (tmp_path / "m.png").exists()  # refused before anything ran


def test_a_query_over_the_pixel_limit_is_a_one_line_error(
    small_export: Path,
    inputs: dict[str, Path],
    tmp_path: Path,
    bilevel_png: Callable[[Path, int, int], Path],
) -> None:
    query = bilevel_png(tmp_path / "huge.png", 20_000, 20_000)
    stderr = _one_error_line(_segment(small_export, inputs, tmp_path / "result.png", query))
    assert f"image {query} is too large" in stderr
    assert "at most 89,478,485 pixels (about 9459 x 9459" in stderr
    assert not (tmp_path / "result.png").exists()
