"""dpnet-segment in a subprocess: runs on the real 65 x 65 export (``small_export``) and on the
fake colour-prototype graphs (where the mask must land on the object), user errors as one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime import Predictor
from dpnet_runtime.preprocess import load_image, load_mask


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


def _run_cli(model: Path, files: dict[str, Path], folder: Path) -> subprocess.CompletedProcess[str]:
    out, overlay = folder / "mask.png", folder / "overlay.png"
    folder.mkdir()
    completed = _segment(
        "--model", model, "--support", f"{files['support']}:{files['mask']}",
        "--support", f"{files['support']}:{files['mask']}",
        "--query", files["query"], "--out", out, "--overlay", overlay, "--threads", "1",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.startswith(f"wrote {out} (")  # one unbroken line, path and all
    assert np.asarray(Image.open(overlay)).shape == (50, 60, 3)
    assert sorted(p.name for p in folder.iterdir()) == ["mask.png", "overlay.png"]
    return completed


def test_cli_writes_the_predictors_mask_and_overlay(
    small_export: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 2)
    _run_cli(small_export, files, folder)
    support, mask = load_image(files["support"]), load_mask(files["mask"])
    with Predictor.open(small_export) as predictor:
        expected = predictor.run_episode([support] * 2, [mask] * 2, load_image(files["query"]))
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "mask.png")), expected.mask * 255)


def test_cli_with_fake_graphs_writes_the_object_mask(
    fake_export_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    _run_cli(fake_export_dir, files, tmp_path / "out")
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png"))
    truth = np.asarray(Image.open(files["truth"]))
    assert mask.shape == (50, 60) and set(np.unique(mask)) <= {0, 255}
    assert np.mean(mask == truth) > 0.98


def test_cli_precision_int8_runs_the_int8_graphs_fake(
    make_fake_export_dir, files: dict[str, Path], tmp_path: Path
) -> None:
    folder = make_fake_export_dir(int8=True)
    for role in ("", "_support", "_query"):
        (folder / f"dpnet{role}.onnx").unlink()  # only the INT8 copies can serve the run
    out = tmp_path / "result.png"  # not mask.png: that is the support's mask, an input
    pair = f"{files['support']}:{files['mask']}"
    args = ("--model", folder, "--support", pair, "--query", files["query"], "--out", out)
    completed = _segment(*args, "--precision", "int8")
    assert completed.returncode == 0, completed.stderr
    assert np.asarray(Image.open(out)).shape == (50, 60)
    fp32 = _segment(*args, "--precision", "fp32")
    assert fp32.returncode == 1 and "holds no ort model" in fp32.stderr
    # Without --precision the most faithful precision present runs, and the run says which.
    auto = _segment(*args)
    assert auto.returncode == 0, auto.stderr
    assert auto.stderr.rstrip().endswith("; model ort-int8 (int8))"), auto.stderr


@pytest.mark.parametrize(
    ("case", "message", "code"),
    [
        ("empty_mask", "error: support mask 1 has no object pixel", 1),
        ("no_models", "holds no ort model", 1),
        ("truncated", "cannot be loaded by the ort backend", 1),
        ("bad_pair", "must be IMAGE:MASK", 2),  # a usage error
    ],
)
def test_cli_user_errors_are_one_line(
    small_export: Path, files: dict[str, Path], tmp_path: Path, case: str, message: str, code: int
) -> None:
    model, pair = small_export, f"{files['support']}:{files['mask']}"
    if case == "empty_mask":
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(files["mask"])
    elif case == "no_models":
        model = tmp_path / "empty"
        model.mkdir()
    elif case == "truncated":
        model = tmp_path / "broken"
        model.mkdir()
        shutil.copy(small_export / "dpnet.onnx", model / "dpnet.onnx")
        (model / "dpnet.onnx").write_bytes(b"\x08\x09garbage")
    else:
        pair = str(files["support"])
    out = tmp_path / "result.png"
    completed = _segment(
        "--model", model, "--support", pair, "--query", files["query"], "--out", out
    )  # fmt: skip
    assert completed.returncode == code
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
