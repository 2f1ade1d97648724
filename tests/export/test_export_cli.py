"""``dpnet-export onnx`` as a user runs it: a console script in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dpnet_runtime import contract
from dpnet_runtime.preprocess import normalize_images

SIZE = 129
EXPORT = str(Path(sys.executable).parent / "dpnet-export")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXPORT, "onnx", *args], capture_output=True, text=True, timeout=600, check=False
    )


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(list(("logits", "mask", "pseudo_count", "confidence")), feed)


def test_help_teaches_the_options():
    result = _cli("--help")
    assert result.returncode == 0
    flags = ("--ckpt", "--out", "--size", "--max-shots", "--precision", "--beta", "--raw-input")
    for flag in flags:
        assert flag in result.stdout


def test_missing_checkpoint_is_one_line_error(tmp_path):
    result = _cli("--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_raw_input_export_matches_float_graph(tmp_path, tiny_checkpoint, tiny_export_dir):
    out_dir = tmp_path / "raw"
    result = _cli(
        "--ckpt", str(tiny_checkpoint), "--out", str(out_dir), "--raw-input", "--max-shots", "2"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        ["dpnet.onnx", "dpnet_support.onnx", "dpnet_query.onnx"]
    )
    model = onnx.load(out_dir / "dpnet.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[contract.META_RAW_INPUT]) is True
    assert int(meta[contract.META_MAX_SHOTS]) == 2
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((2, 2, SIZE, SIZE), dtype=np.uint8)
    masks[..., 30:90, 40:100] = 1
    query = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    raw = _run(
        out_dir / "dpnet.onnx",
        {
            contract.SUPPORT_IMAGES: images,
            contract.SUPPORT_MASKS: masks,
            contract.QUERY_IMAGE: query,
        },
    )
    normalised = _run(
        tiny_export_dir / "dpnet.onnx",
        {
            contract.SUPPORT_IMAGES: normalize_images(images),
            contract.SUPPORT_MASKS: masks.astype(np.float32),
            contract.QUERY_IMAGE: normalize_images(query),
        },
    )
    np.testing.assert_allclose(raw[0], normalised[0], atol=1e-4)
    for got, expected in zip(raw[1:], normalised[1:], strict=True):
        np.testing.assert_array_equal(got, expected)
