"""dpnet-train --init: fine-tuning starts from a checkpoint's weights with a fresh optimiser."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpnet.checkpoint import load_checkpoint, make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.model.dpnet import build_dpnet
from dpnet.train.loop import train
from dpnet.train.options import TrainOptions
from dpnet_runtime.errors import InputError
from dpnet_runtime.fileio import sha256_file


def _options(out: Path, **changes: object) -> TrainOptions:
    values: dict[str, object] = {
        "out": out, "steps": 2, "batch_size": 2, "val_every": 0, "val_episodes": 0,
        "threads": 2, "device": "cpu", "pretrained_backbone": False, "log_every": 1,
        "optimizer": "adamw",
    }  # fmt: skip
    values.update(changes)
    return TrainOptions(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of a 3-step tiny run (with its optimiser state at step 3)."""
    out = tmp_path_factory.mktemp("source")
    return train(_options(out, steps=3, seed=7)).last_checkpoint


def _optimizer_steps(path: Path) -> set[float]:
    state = load_checkpoint(path).train_state
    assert state is not None
    return {float(entry["step"]) for entry in state["optimizer"]["state"].values()}


@pytest.mark.slow
def test_init_loads_the_weights_and_starts_a_fresh_run(source: Path, tmp_path: Path) -> None:
    # A vanishing learning rate: after one step the weights are still the checkpoint's.
    result = train(_options(tmp_path / "tuned", steps=1, lr=1e-12, seed=3, init=source))
    assert result.start_step == 0 and result.steps == 1 and len(result.losses) == 1
    tuned, original = load_checkpoint(result.last_checkpoint), load_checkpoint(source)
    assert tuned.config == original.config
    for name, tensor in original.state_dict.items():
        torch.testing.assert_close(tuned.state_dict[name], tensor, atol=1e-6, rtol=0)
    torch.manual_seed(3)  # what the run would have started from without --init
    fresh = build_dpnet(original.config, pretrained_backbone=False).state_dict()
    assert any(not torch.equal(fresh[name], t) for name, t in original.state_dict.items())
    assert _optimizer_steps(source) == {3.0}
    assert _optimizer_steps(result.last_checkpoint) == {1.0}  # a new optimiser, not step 4
    init = tuned.meta["init"]
    assert init == {
        "checkpoint": str(source), "sha256": sha256_file(source), "dataset": "synthetic",
        "fold": 0,
    }  # fmt: skip
    resumed = train(_options(tmp_path / "tuned", steps=2, lr=1e-12, resume=True))
    assert resumed.start_step == 1
    assert load_checkpoint(resumed.last_checkpoint).meta["init"] == init
    assert load_checkpoint(source).meta["init"] is None


def test_init_refuses_another_network(tmp_path: Path) -> None:
    checkpoint = tmp_path / "tiny.pt"
    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    save_checkpoint(checkpoint, model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=0))
    with pytest.raises(InputError, match=r"holds a tiny network that differs .* input_size"):
        train(_options(tmp_path / "a", init=checkpoint, config="paper"))
    with pytest.raises(InputError, match=r"differs .* in use_pim, use_msf, pseudo_prototype"):
        train(_options(tmp_path / "b", init=checkpoint, variant="baseline"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_cli_refuses_another_network_in_one_line(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "dpnet.train", "--out", str(out), "--init", str(source),
        "--preset", "paper", "--steps", "1",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --init {source} holds a tiny network")
    assert not out.exists()
