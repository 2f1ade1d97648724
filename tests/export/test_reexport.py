"""A re-export into a folder holding an earlier export writes all its files, or none.

The earlier export is the session's tiny FP32 + FP16 export; the re-export (FP32 only, another
beta, ``--overwrite``: without it the FP16 copies are refused, see ``test_export_outputs.py``)
would replace the three FP32 graphs and remove the three FP16 copies. It fails part-way
twice: at its last rename, against a real obstacle (an immutable graph, through the CLI), and
at the very last step, the last removal, with an I/O error planted at the file-system boundary.
Both times every earlier file must be there byte for byte; then it runs through.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime import fileio
from dpnet_runtime.errors import DpnetError

pytestmark = pytest.mark.slow

_FP32 = ["dpnet.onnx", "dpnet_query.onnx", "dpnet_support.onnx"]
_FP16 = ["dpnet_fp16.onnx", "dpnet_query_fp16.onnx", "dpnet_support_fp16.onnx"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def earlier(tiny_export_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(tiny_export_dir, out)
    assert sorted(_snapshot(out)) == sorted(_FP32 + _FP16)
    return out


def test_a_reexport_stopped_at_its_last_rename_leaves_the_earlier_export(
    tiny_checkpoint: Path, earlier: Path, export_cli, immutable
) -> None:
    before = _snapshot(earlier)
    args = ("onnx", "--ckpt", str(tiny_checkpoint), "--out", str(earlier), "--beta", "0.35",
            "--overwrite")  # fmt: skip
    with immutable(earlier / "dpnet_query.onnx"):  # the last of the three graphs to be renamed
        done = export_cli(*args)
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip().splitlines()[-1]  # after the progress lines
    assert error.startswith("error: ") and "Traceback" not in done.stderr
    assert "dpnet_query.onnx: Operation not permitted; the earlier files are unchanged" in error
    assert _snapshot(earlier) == before


def test_a_reexport_failing_at_its_last_removal_leaves_the_earlier_export(
    tiny_checkpoint: Path, earlier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(earlier)
    real_replace = os.replace

    def replace(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
        if Path(source).name == _FP16[-1]:  # moving the last stale copy out of the way
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(source, destination)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(DpnetError, match="Input/output error; the earlier files are unchanged"):
        export_onnx(tiny_checkpoint, earlier, ExportOptions(beta=0.35, overwrite=True))
    monkeypatch.undo()
    assert _snapshot(earlier) == before

    export_onnx(tiny_checkpoint, earlier, ExportOptions(beta=0.35, overwrite=True))
    after = _snapshot(earlier)
    assert sorted(after) == _FP32  # the FP16 copies of the earlier export are gone
    assert all(after[name] != before[name] for name in _FP32)
