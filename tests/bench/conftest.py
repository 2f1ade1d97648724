"""A tiny random-weight DPNet checkpoint shared by the bench tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.model.dpnet import build_dpnet


def write_tiny_checkpoint(path: Path, seed: int, background_bias: float = 0.0) -> Path:
    """Save a ``tiny`` DPNet with random weights drawn from ``seed``.

    ``background_bias`` is added to the classifier's background logit: a large value gives a
    model that predicts background everywhere (random models mostly predict one class).
    """
    torch.manual_seed(seed)
    model = build_dpnet(preset("tiny"), pretrained_backbone=False).eval()
    bias = model.decoder.classifier.bias
    assert bias is not None
    with torch.no_grad():
        bias[0] += background_bias
    save_checkpoint(path, model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=0))
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)
