"""DistributedDataParallel training with 2 real CPU processes (gloo) under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpnet.checkpoint import load_model
from dpnet.train.distributed import DistributedContext, shard_episode_indices
from dpnet.train.loop import weights_sha256

WORKER = Path(__file__).with_name("ddp_train_worker.py")


def test_shards_of_one_step_are_disjoint_and_cover_consecutive_episodes() -> None:
    shards = [
        shard_episode_indices(5, 3, DistributedContext(rank, 2, rank, torch.device("cpu")), 1000)
        for rank in range(2)
    ]
    assert shards == [[30, 31, 32], [33, 34, 35]]


def test_shard_indices_wrap_around_the_dataset() -> None:
    context = DistributedContext(1, 2, 1, torch.device("cpu"))
    assert shard_episode_indices(2, 2, context, 10) == [0, 1]


@pytest.mark.slow
def test_two_ranks_end_with_identical_weights_and_rank0_writes_them(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", str(WORKER), str(tmp_path),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    hashes = [(tmp_path / f"rank{rank}.sha256").read_text() for rank in range(2)]
    assert hashes[0] == hashes[1]
    model, checkpoint = load_model(tmp_path / "run" / "last.pt")
    assert weights_sha256(model) == hashes[0]
    assert checkpoint.train_state is not None
    assert checkpoint.train_state["world_size"] == 2
    assert checkpoint.train_state["step"] == 3
