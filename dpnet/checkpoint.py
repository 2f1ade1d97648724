"""Save and load the ``dpnet-checkpoint`` format (docs/design.md#the-model).

One file, ``torch.save`` of a plain dict::

    {"format": "dpnet-checkpoint", "version": 1, "config": {...}, "state_dict": {...},
     "meta": {"dataset", "fold", "shots", "epoch", "metrics", "created", "dpnet_version",
              "init"},
     "train_state": {...}}            # optional: optimiser, step, RNG for --resume

written atomically and read with ``weights_only=True`` (no arbitrary unpickling). The format and
version are checked before any tensor is used.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from dpnet import __version__
from dpnet.config import DPNetConfig, config_from_dict
from dpnet.model.dpnet import DPNet
from dpnet_runtime.errors import DpnetError, IncompatibleModelError, ModelFileError, one_line
from dpnet_runtime.fileio import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "load_checkpoint",
    "load_model",
    "make_meta",
    "save_checkpoint",
]

CHECKPOINT_FORMAT: Final = "dpnet-checkpoint"
CHECKPOINT_VERSION: Final = 1
_REQUIRED_KEYS: Final = ("format", "version", "config", "state_dict", "meta")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: config, weights, meta and the optional training state."""

    config: DPNetConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    train_state: dict[str, Any] | None


def make_meta(
    *,
    dataset: str,
    fold: int,
    shots: int,
    epoch: int,
    metrics: dict[str, float] | None = None,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``meta`` dict of a checkpoint, stamped with the time and dpnet version.

    ``init`` records the checkpoint a fine-tuning run started from (``dpnet-train --init``);
    ``None`` for a run from scratch.
    """
    return {
        "dataset": dataset,
        "fold": fold,
        "shots": shots,
        "epoch": epoch,
        "metrics": dict(metrics or {}),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dpnet_version": __version__,
        "init": init,
    }


def save_checkpoint(
    path: Path, model: DPNet, meta: dict[str, Any], train_state: dict[str, Any] | None = None
) -> None:
    """Write ``model`` to ``path`` atomically (temp file + fsync + rename).

    Raises:
        DpnetError: the folder does not exist or cannot be written.
    """
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "meta": meta,
    }
    if train_state is not None:
        payload["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check a checkpoint file.

    Raises:
        ModelFileError: missing, truncated, not a torch file, or not a dpnet checkpoint.
        IncompatibleModelError: a dpnet checkpoint of another format version.
    """
    path = Path(path)
    if path.is_dir():
        inside = [path / name for name in ("best.pt", "last.pt") if (path / name).is_file()]
        hint = f"did you mean {inside[0]}?" if inside else "give a .pt file dpnet-train wrote"
        raise ModelFileError(f"checkpoint {path} is a folder, not a checkpoint file; {hint}")
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} does not exist")
    # torch.save writes a zip archive; a truncated copy loses its central directory.
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"checkpoint {path} is truncated or not a PyTorch file; "
            "re-copy it or point --ckpt at a file written by dpnet-train"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelFileError(
            f"checkpoint {path} is damaged ({one_line(exc, limit=160)}); re-copy it"
        ) from exc
    except Exception as exc:  # weights_only refuses pickled objects with its own error types
        raise ModelFileError(
            f"checkpoint {path} holds objects other than tensors and plain data "
            f"({one_line(exc, limit=160)}); "
            "dpnet only loads its own checkpoint format"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{path} is not a dpnet checkpoint (no 'format': '{CHECKPOINT_FORMAT}' entry); "
            "a plain state dict? use the file written by dpnet-train"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise IncompatibleModelError(
            f"checkpoint {path} has format version {payload.get('version')!r}, this dpnet "
            f"({__version__}) reads version {CHECKPOINT_VERSION}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        raise ModelFileError(f"checkpoint {path} is missing the keys {missing}")
    try:
        config = config_from_dict(payload["config"])
    except DpnetError as exc:
        raise ModelFileError(f"checkpoint {path} has an invalid config: {exc}") from exc
    return Checkpoint(config, payload["state_dict"], payload["meta"], payload.get("train_state"))


def load_model(path: Path) -> tuple[DPNet, Checkpoint]:
    """Build the DPNet of a checkpoint and load its weights (eval mode).

    Raises:
        ModelFileError: as :func:`load_checkpoint`, or weights that do not fit the config.
    """
    checkpoint = load_checkpoint(path)
    model = DPNet(checkpoint.config)
    try:
        model.load_state_dict(checkpoint.state_dict)
    except RuntimeError as exc:
        raise ModelFileError(
            f"checkpoint {path} weights do not match its config: {one_line(exc, limit=160)}"
        ) from exc
    return model.eval(), checkpoint
