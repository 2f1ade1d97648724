"""The torch device of a run: ``auto``, ``cpu`` or ``cuda``, shared by training and evaluation."""

from __future__ import annotations

import torch

from dpnet_runtime.errors import BackendUnavailableError, InputError

__all__ = ["resolve_device"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``; CUDA picks ``local_rank``'s GPU.

    Raises:
        InputError: an unknown device name.
        BackendUnavailableError: ``cuda`` asked for but absent.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {name!r}")
    use_cuda = torch.cuda.is_available() if name == "auto" else name == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "device 'cuda' asked for but torch sees no CUDA GPU; use --device cpu"
        )
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
