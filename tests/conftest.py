"""Shared session fixtures: tiny checkpoints (random and briefly trained) and their ONNX exports.

Exporting is the slow part (seconds per graph), so each checkpoint is exported once per session,
with the FP16 copies, and every test that needs graphs reuses the folder (read-only).

Two sizes: the tiny preset's own 129 x 129 (``tiny_*``: parity and precision tests) and a
65 x 65 variant with K in 1..2 (``small_*``: the real graphs the runtime and hardening tests
drive, a few milliseconds per query), the latter also with ``--raw-input``.

The INT8 tests need a model that segments (quantization must be able to change its masks):
``tiny_segmenting_checkpoint``, a tiny DPNet trained for 150 steps, exported with its INT8
copies (``tiny_segmenting_export_dir``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from docs_snippets import build_workspace

from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.data import build_dataset
from dpnet.model.dpnet import DPNet, build_dpnet
from dpnet.model.losses import dpnet_losses
from dpnet.train.loop import train
from dpnet.train.options import TrainOptions
from dpnet_export.calibration import CalibrationOptions
from dpnet_export.torch_to_onnx import ExportOptions, export_onnx
from dpnet_runtime.preprocess import normalize_images

TINY_SIZE = 129  # the tiny preset's input size
SMALL_SIZE = 65
SMALL_MAX_SHOTS = 2
_TRAIN_STEPS = 6
SEGMENTING_STEPS = 150
CALIBRATION_EPISODES = 12  # INT8 calibration in the tests: small, for test time


def _save(model: DPNet, path: Path, epoch: int) -> Path:
    save_checkpoint(path, model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=epoch))
    return path


def _random_tiny(factory: pytest.TempPathFactory, name: str, **overrides: int) -> Path:
    torch.manual_seed(0)
    model = build_dpnet(preset("tiny", **overrides), pretrained_backbone=False)
    return _save(model, factory.mktemp("ckpt") / name, epoch=0)


def _export(
    checkpoint: Path, factory: pytest.TempPathFactory, name: str, options: ExportOptions
) -> Path:
    out_dir = factory.mktemp("export") / name
    export_onnx(checkpoint, out_dir, options)
    return out_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny DPNet checkpoint (129 x 129 input, seed 0)."""
    return _random_tiny(tmp_path_factory, "tiny.pt")


@pytest.fixture(scope="session")
def tiny_trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DPNet with non-trivial trunk BatchNorm statistics and a few SGD steps on synthetic
    episodes: weights unlike the initialiser's, with a discriminator that is no longer flat."""
    torch.manual_seed(1)
    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    for name, buffer in model.backbone.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-0.2, 0.2)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    dataset = build_dataset(
        "synthetic", root=None, fold=0, split="train", shots=1, seed=0,
        episodes=2 * _TRAIN_STEPS, image_size=TINY_SIZE,
    )  # fmt: skip
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    model.train()
    for step in range(_TRAIN_STEPS):
        episodes = [dataset[2 * step + i] for i in range(2)]
        support_images = torch.from_numpy(
            normalize_images(np.stack([np.stack(e.support_images) for e in episodes]))
        )
        support_masks = torch.from_numpy(
            np.stack([np.stack(e.support_masks) for e in episodes]).astype(np.float32)
        )
        query = torch.from_numpy(normalize_images(np.stack([e.query_image for e in episodes])))
        query_masks = torch.from_numpy(np.stack([e.query_mask for e in episodes]).astype(np.int64))
        output = model(support_images, support_masks, query)
        losses = dpnet_losses(
            output.logits, output.aux_logits, output.scores, output.confidence, query_masks,
            aux_weight=1.0, dis_weight=1.0,
        )  # fmt: skip
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    return _save(model.eval(), tmp_path_factory.mktemp("ckpt") / "tiny_trained.pt", epoch=1)


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``export_onnx(tiny_checkpoint, precisions=("fp16",))``: FP32 graphs and FP16 copies."""
    return _export(tiny_checkpoint, tmp_path_factory, "tiny", ExportOptions(precisions=("fp16",)))


@pytest.fixture(scope="session")
def tiny_trained_export_dir(
    tiny_trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``export_onnx(tiny_trained_checkpoint, precisions=("fp16",))``."""
    return _export(
        tiny_trained_checkpoint,
        tmp_path_factory,
        "tiny_trained",
        ExportOptions(precisions=("fp16",)),
    )


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny DPNet checkpoint at 65 x 65 (seed 0)."""
    return _random_tiny(tmp_path_factory, "small.pt", input_size=SMALL_SIZE)


@pytest.fixture(scope="session")
def small_export(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three FP32 graphs of :func:`small_checkpoint`: normalised float input, K in 1..2."""
    options = ExportOptions(max_shots=SMALL_MAX_SHOTS)
    return _export(small_checkpoint, tmp_path_factory, "small", options)


@pytest.fixture(scope="session")
def small_raw_export(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with ``--raw-input`` (uint8 NHWC images and masks) and the FP16 copies."""
    options = ExportOptions(max_shots=SMALL_MAX_SHOTS, raw_input=True, precisions=("fp16",))
    return _export(small_checkpoint, tmp_path_factory, "small_raw", options)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_bilevel_png(path: Path, width: int, height: int) -> Path:
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = ((b"IHDR", header), (b"IDAT", data), (b"IEND", b""))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(*chunk) for chunk in chunks))
    return path


@pytest.fixture(scope="session")
def bilevel_png() -> Callable[[Path, int, int], Path]:
    """``write(path, width, height)``: a valid all-black 1-bit PNG, written without PIL.

    A few kB of deflated zeros hold hundreds of millions of pixels: a real file over PIL's
    pixel limit, made in a fraction of a second.
    """
    return _write_bilevel_png


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    chattr = shutil.which("chattr") or "chattr"
    try:
        done = subprocess.run([chattr, "+i", str(path)], capture_output=True, check=False)
    except FileNotFoundError:
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and ext4, xfs or btrfs)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.fixture
def immutable() -> Callable[[Path], contextlib.AbstractContextManager[None]]:
    """``with immutable(path):`` the file can be neither replaced nor removed, by root either
    (``chattr +i``): a real obstacle for a rename. Skips the test where chattr cannot do it."""
    return _immutable


def _char_device(path: Path, number: int) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, number)
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    return path


@pytest.fixture
def char_device() -> Callable[[Path, int], Path]:
    """``make(path, os.makedev(major, minor))``: a real character device node at ``path``
    (``os.makedev(1, 3)`` is ``/dev/null``, ``(1, 7)`` ``/dev/full``). Skips without root."""
    return _char_device


@pytest.fixture(scope="session")
def tiny_segmenting_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DPNet trained by ``dpnet-train`` for 150 AdamW steps on synthetic episodes (seed 0,
    random trunk): about 35 % mIoU on fold 0, so its masks follow the images (about 2 minutes
    on 2 cores)."""
    out = tmp_path_factory.mktemp("segmenting")
    train(TrainOptions(out=out, steps=SEGMENTING_STEPS, val_episodes=0, pretrained_backbone=False))
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_segmenting_export_dir(
    tiny_segmenting_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``export_onnx(tiny_segmenting_checkpoint, precisions=("fp16", "int8"))``, calibrated on
    :data:`CALIBRATION_EPISODES` synthetic episodes: FP32, FP16 and INT8 graphs of a model whose
    masks follow the images, so parity with PyTorch is not met by all-background masks."""
    calibration = CalibrationOptions(episodes=CALIBRATION_EPISODES)
    options = ExportOptions(precisions=("fp16", "int8"), calibration=calibration)
    return _export(tiny_segmenting_checkpoint, tmp_path_factory, "tiny_segmenting", options)


@pytest.fixture(scope="session")
def docs_workspace(
    tiny_segmenting_checkpoint: Path,
    tiny_segmenting_export_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The folder the docs' code blocks start from (``tests/docs_snippets.py`` lists it): the
    segmenting tiny model as ``model.pt``, its export as ``out/``, images, masks and a ``folder``
    dataset. Read-only: each page's blocks run in a copy."""
    root = tmp_path_factory.mktemp("docs") / "workspace"
    return build_workspace(root, tiny_segmenting_checkpoint, tiny_segmenting_export_dir)
