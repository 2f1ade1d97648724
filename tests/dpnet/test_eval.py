"""Evaluation: original-size predictions, determinism, options, the dpnet-eval CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpnet.checkpoint import make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.data import FewShotDataset, build_dataset
from dpnet.eval.evaluate import EvalOptions, evaluate, predict_episode
from dpnet.model.dpnet import DPNet, build_dpnet
from dpnet_runtime.errors import InputError


@pytest.fixture(scope="module")
def model() -> DPNet:
    torch.manual_seed(0)
    return build_dpnet(preset("tiny"), pretrained_backbone=False).eval()


def _episodes(seed: int, count: int = 4, image_size: int = 150) -> FewShotDataset:
    return build_dataset(
        "synthetic", root=None, fold=1, split="val", shots=1, seed=seed, episodes=count,
        image_size=image_size,
    )  # fmt: skip


@pytest.mark.parametrize("scales", [(1.0,), (0.7, 1.3)])
def test_prediction_has_the_labels_original_size(model: DPNet, scales: tuple[float, ...]) -> None:
    episode = _episodes(0, 1, image_size=150)[0]
    mask = predict_episode(model, episode, EvalOptions(scales=scales))
    assert mask.shape == episode.query_mask.shape == (150, 150)
    assert set(mask.ravel().tolist()) <= {0, 1}


def test_same_seed_gives_the_same_result(model: DPNet) -> None:
    first = evaluate(model, _episodes(7)).to_dict()
    second = evaluate(model, _episodes(7)).to_dict()
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert first["episodes"] == 4
    assert all(item["class_id"] in range(6, 11) for item in first["per_class"])


def test_evaluate_restores_training_mode(model: DPNet) -> None:
    model.train()
    evaluate(model, _episodes(0, 1))
    assert model.training
    model.eval()


@pytest.mark.parametrize("options", [{"scales": ()}, {"scales": (0.0,)}, {"beta": 1.5}])
def test_bad_options_raise_input_error(options: dict[str, object]) -> None:
    with pytest.raises(InputError):
        EvalOptions(**options)  # type: ignore[arg-type]


@pytest.mark.slow
def test_dpnet_eval_cli_writes_json(model: DPNet, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, make_meta(dataset="synthetic", fold=2, shots=1, epoch=0))
    out = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "dpnet.eval", "--ckpt", str(ckpt), "--episodes", "3",
        "--scales", "0.9,1.0", "--json", str(out),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "FB-IoU" in completed.stdout
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["scales"] == [0.9, 1.0]
    assert all(11 <= item["class_id"] <= 15 for item in result["per_class"])  # fold 2 from meta
    assert not math.isnan(result["fbiou"])


@pytest.mark.slow
def test_dpnet_eval_cli_reports_a_missing_checkpoint_in_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dpnet.eval", "--ckpt", str(tmp_path / "none.pt")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "does not exist" in completed.stderr and "Traceback" not in completed.stderr
