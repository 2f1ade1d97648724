"""A tiny real DPNet (random weights) and its ONNX export, shared by the hardening tests.

The export is the real ``export_onnx`` output (dynamo, opset 18) at a 65 x 65 input, so every
runtime path runs through the graphs users get, in a few milliseconds per query.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SIZE = 65
MAX_SHOTS = 2


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``dpnet-checkpoint`` of the tiny preset at 65 x 65, random weights (seed 0)."""
    torch = pytest.importorskip("torch")
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.model.dpnet import build_dpnet

    torch.manual_seed(0)
    model = build_dpnet(preset("tiny", input_size=SIZE), pretrained_backbone=False)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    save_checkpoint(path, model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=0))
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three FP32 graphs of :func:`tiny_checkpoint`, normalised input, K in 1..2."""
    from dpnet_export.torch_to_onnx import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("export")
    export_onnx(tiny_checkpoint, out, ExportOptions(max_shots=MAX_SHOTS))
    return out


@pytest.fixture(scope="session")
def tiny_raw_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same graphs with ``--raw-input``: uint8 NHWC images and masks, normalised inside."""
    from dpnet_export.torch_to_onnx import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("raw_export")
    export_onnx(tiny_checkpoint, out, ExportOptions(max_shots=MAX_SHOTS, raw_input=True))
    return out
