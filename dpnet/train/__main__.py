"""``python -m dpnet.train`` (and ``torchrun -m dpnet.train``): the ``dpnet-train`` command."""

from __future__ import annotations

from dpnet.train.cli import main

main()
