"""The console scripts of :mod:`dpnet_bench`, importable without torch.

As in :mod:`dpnet.scripts`: each names its typer app for
:func:`~dpnet_runtime.console.run_app`, so a base install without torch prints one line
naming the extra to install (``pip install 'dpnet[train]'``) instead of a traceback.
"""

from __future__ import annotations

import sys

from dpnet_runtime.console import run_app

__all__ = ["bench", "demo"]


def bench() -> None:
    """``dpnet-bench`` (:mod:`dpnet_bench.cli`); ``dpnet-bench serve ...`` load-tests a running
    dpnet-serve (:mod:`dpnet_bench.serve_cli`)."""
    if sys.argv[1:2] == ["serve"]:
        run_app("dpnet_bench.serve_cli:app", sys.argv[2:], program="dpnet-bench serve")
    run_app("dpnet_bench.cli:app")


def demo() -> None:
    """``dpnet-demo`` (:mod:`dpnet_bench.demo`)."""
    run_app("dpnet_bench.demo:app")
