"""One rank of the DDP test (run by torchrun): train a few steps, write this rank's weight hash.

Usage: ``torchrun --nproc_per_node 2 ddp_train_worker.py OUT``; writes ``OUT/rank<r>.sha256``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dpnet.train.loop import train
from dpnet.train.options import TrainOptions
from dpnet_runtime.fileio import atomic_write_text


def main(out: Path) -> None:
    options = TrainOptions(
        out=out / "run", steps=3, batch_size=2, val_every=0, val_episodes=0, threads=1,
        device="cpu", pretrained_backbone=False, seed=3,
    )  # fmt: skip
    result = train(options)
    atomic_write_text(out / f"rank{result.rank}.sha256", result.weights_sha256)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
