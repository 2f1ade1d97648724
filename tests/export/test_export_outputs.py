"""The export commands never delete or overwrite what they did not write, and say so first.

``dpnet-export onnx`` into a folder that holds an earlier export's other precisions refuses
before it loads the checkpoint (the checkpoint here does not even exist), unless
``--overwrite``; the TensorRT and Triton outputs never land on their inputs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dpnet_export.calibration import CalibrationOptions
from dpnet_export.onnx_to_engine import EngineBuildOptions
from dpnet_export.onnx_to_triton import onnx_to_triton
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime.errors import InputError, ModelFileError, OptionError

_FP16 = ["dpnet_fp16.onnx", "dpnet_query_fp16.onnx", "dpnet_support_fp16.onnx"]


def _earlier_fp16(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    for name in _FP16:
        (folder / name).write_bytes(f"an earlier export's {name}".encode())
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_other_precisions_are_refused_before_the_export_starts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = _earlier_fp16(out)
    with pytest.raises(InputError) as raised:
        export_onnx(tmp_path / "missing.pt", out, ExportOptions())
    assert str(raised.value) == (
        f"--out {out} holds dpnet_fp16.onnx, dpnet_query_fp16.onnx, dpnet_support_fp16.onnx, "
        "which an earlier export wrote in other precisions and would no longer match the new "
        "graphs; pass --overwrite to remove them, or choose another --out"
    )
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    # Writing FP16 again replaces them (the export's own files): nothing to refuse.
    with pytest.raises(ModelFileError, match="does not exist"):
        export_onnx(tmp_path / "missing.pt", out, ExportOptions(precisions=("fp16",)))
    with pytest.raises(ModelFileError, match="does not exist"):  # past the check: loading
        export_onnx(tmp_path / "missing.pt", out, ExportOptions(overwrite=True))


@pytest.mark.slow
def test_the_cli_refuses_then_removes_with_overwrite(
    tiny_checkpoint: Path, tmp_path: Path, export_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    out = tmp_path / "out"
    before = _earlier_fp16(out)
    args = ("onnx", "--ckpt", str(tiny_checkpoint), "--out", str(out))
    refused = export_cli(*args)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: --out {out} holds dpnet_fp16.onnx, ")
    assert refused.stderr.count("\n") == 1
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    done = export_cli(*args, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "dpnet.onnx",
        "dpnet_query.onnx",
        "dpnet_support.onnx",
    ]


def test_an_export_into_its_dataset_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    options = ExportOptions(
        precisions=("int8",), calibration=CalibrationOptions(dataset="folder", root=root)
    )
    with pytest.raises(InputError, match=r"--out .*mine/out lies inside --data-root .*mine: "):
        export_onnx(tmp_path / "missing.pt", root / "out", options)
    assert list(root.iterdir()) == []


def test_an_engine_never_lands_on_its_graph_and_has_an_engine_name(tmp_path: Path) -> None:
    graph, cache = tmp_path / "dpnet.onnx", tmp_path / "timing.engine"
    with pytest.raises(OptionError, match=r"--out .*dpnet.onnx: .*name it \.engine or \.plan"):
        EngineBuildOptions(tmp_path, out_path=graph)
    with pytest.raises(InputError, match=r"--out .*timing.engine is --timing-cache .*timing"):
        EngineBuildOptions(tmp_path, out_path=cache, timing_cache=cache)
    assert EngineBuildOptions(tmp_path).engine_path == tmp_path / "dpnet.engine"
    fp16 = EngineBuildOptions(tmp_path, precision="fp16")
    assert fp16.engine_path == tmp_path / "dpnet_fp16.engine"
    plan = EngineBuildOptions(tmp_path, out_path=tmp_path / "model.plan")
    assert plan.engine_path.suffix == ".plan"


def test_a_triton_repository_is_never_the_export(tmp_path: Path) -> None:
    export = tmp_path / "out"
    export.mkdir()
    with pytest.raises(InputError, match=r"--out .*out is --model .*out: "):
        onnx_to_triton(export, export)
    assert list(export.iterdir()) == []
