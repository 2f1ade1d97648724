"""The console scripts of :mod:`dpnet`, importable without torch.

The base install (``pip install dpnet``, no torch) puts these scripts on PATH too. Each names
its typer app for :func:`~dpnet_runtime.console.run_app`, which imports it inside the error
boundary: without torch the script prints one line naming the extra to install
(``pip install 'dpnet[train]'``) and exits 1, instead of a traceback.
"""

from __future__ import annotations

from dpnet_runtime.console import run_app

__all__ = ["evaluate", "info", "train"]


def train() -> None:
    """``dpnet-train`` (:mod:`dpnet.train.cli`)."""
    run_app("dpnet.train.cli:app")


def evaluate() -> None:
    """``dpnet-eval`` (:mod:`dpnet.eval.cli`)."""
    run_app("dpnet.eval.cli:app")


def info() -> None:
    """``dpnet-info`` (:mod:`dpnet.info`)."""
    run_app("dpnet.info:app")
