"""dpnet-segment in a subprocess: a real run, and user errors as one line without traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def files(tmp_path: Path, scene) -> dict[str, Path]:
    image, mask = scene(40, 48, 5, 10, 20)
    query, truth = scene(50, 60, 20, 25, 22)
    paths = {name: tmp_path / f"{name}.png" for name in ("support", "mask", "query", "truth")}
    Image.fromarray(image).save(paths["support"])
    Image.fromarray(mask).save(paths["mask"])  # a 0/1 label PNG
    Image.fromarray(query).save(paths["query"])
    Image.fromarray(truth * 255).save(paths["truth"])
    return paths


def _segment(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpnet_runtime", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_mask_and_overlay(
    export_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 2)
    out, overlay = folder / "mask.png", folder / "overlay.png"
    folder.mkdir()
    completed = _segment(
        "--model", export_dir, "--support", f"{files['support']}:{files['mask']}",
        "--support", f"{files['support']}:{files['mask']}",
        "--query", files["query"], "--out", out, "--overlay", overlay, "--threads", "1",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"wrote {out} (")  # one unbroken line, path and all
    mask = np.asarray(Image.open(out))
    truth = np.asarray(Image.open(files["truth"]))
    assert mask.shape == (50, 60) and set(np.unique(mask)) <= {0, 255}
    assert np.mean(mask == truth) > 0.98
    assert np.asarray(Image.open(overlay)).shape == (50, 60, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.png", "overlay.png"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty_mask", "error: support mask 1 has no object pixel"),
        ("no_models", "holds no ort model"),
        ("truncated", "cannot be loaded by the ort backend"),
        ("bad_pair", "must be IMAGE:MASK"),
    ],
)
def test_cli_user_errors_are_one_line(
    export_dir: Path, files: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    model, pair = export_dir, f"{files['support']}:{files['mask']}"
    if case == "empty_mask":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(files["mask"])
    elif case == "no_models":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "truncated":
        model = tmp_path / "broken"
        model.mkdir()
        shutil.copy(export_dir / "dpnet.onnx", model / "dpnet.onnx")
        (model / "dpnet.onnx").write_bytes(b"\x08\x09garbage")
    else:
        pair = str(files["support"])
    out = tmp_path / "result.png"
    completed = _segment(
        "--model", model, "--support", pair, "--query", files["query"], "--out", out
    )  # fmt: skip
    assert completed.returncode == 1
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_console_script_help_lists_options() -> None:
    script = Path(sys.executable).with_name("dpnet-segment")
    if not script.exists():
        pytest.skip("dpnet-segment is not installed in this environment")
    completed = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0
    for option in (
        "--model",
        "--support",
        "--query",
        "--out",
        "--overlay",
        "--backend",
        "--threads",
    ):
        assert option in completed.stdout
