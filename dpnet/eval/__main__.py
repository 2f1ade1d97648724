"""``python -m dpnet.eval``: the ``dpnet-eval`` command."""

from __future__ import annotations

from dpnet.eval.cli import main

main()
