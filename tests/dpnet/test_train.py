"""Episodic training: options, loss going down, resume, refusing to overwrite a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpnet.checkpoint import load_checkpoint, load_model
from dpnet.data import build_dataset
from dpnet.eval.evaluate import evaluate
from dpnet.model.dpnet import build_dpnet
from dpnet.train.loop import TrainResult, train, weights_sha256
from dpnet.train.options import ABLATION_VARIANTS, TrainOptions, variant_config
from dpnet_runtime.errors import InputError, ModelFileError


def _options(out: Path, **changes: object) -> TrainOptions:
    values: dict[str, object] = {
        "out": out, "steps": 4, "batch_size": 2, "val_every": 0, "val_episodes": 0,
        "threads": 2, "device": "cpu", "pretrained_backbone": False, "log_every": 2,
    }  # fmt: skip
    values.update(changes)
    return TrainOptions(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{"variant": "resnet"}, {"dataset": "imagenet"}, {"steps": 0}, {"lr": -1.0}, {"log_every": 0}],
)
def test_bad_options_raise_input_error(tmp_path: Path, changes: dict[str, object]) -> None:
    with pytest.raises(InputError):
        _options(tmp_path, **changes)


def test_ablation_variants_set_the_paper_switches() -> None:
    assert variant_config("tiny", "ccm").pseudo_prototype == "ccm"
    baseline = variant_config("tiny", "baseline")
    assert (baseline.use_pim, baseline.use_msf, baseline.pseudo_prototype) == (False, False, "none")
    assert {variant_config("tiny", v).pseudo_prototype for v in ABLATION_VARIANTS} == {
        "none", "global", "cosine", "ccm"
    }  # fmt: skip


def test_resume_without_a_run_names_the_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"last\.pt"):
        train(_options(tmp_path / "run", resume=True))


def test_a_run_inside_its_dataset_or_over_its_init_checkpoint_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mine"  # a folder dataset: a run folder in it would read as a class
    root.mkdir()
    folder = TrainOptions(out=root / "run", dataset="folder", data_root=root, steps=1)
    with pytest.raises(InputError, match=r"--out .*mine/run lies inside --data-root .*mine: "):
        train(folder)
    init = tmp_path / "run" / "best.pt"
    init.parent.mkdir()
    init.write_bytes(b"a checkpoint of an earlier run")
    with pytest.raises(InputError, match=r"--out .*run/best.pt is --init .*run/best.pt: "):
        train(_options(tmp_path / "run", init=init))
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["best.pt", "mine", "run"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """200 steps of the tiny config on synthetic fold 0 (about 30 s on 2 free cores)."""
    out = tmp_path_factory.mktemp("short_run")
    return train(_options(out, steps=200, batch_size=4, log_every=20, seed=1))


@pytest.mark.slow
def test_short_training_on_synthetic_lowers_the_loss(short_run: TrainResult) -> None:
    first, last = short_run.losses[0], short_run.losses[-1]
    assert short_run.steps == 200
    assert last.total < 0.8 * first.total, [record.total for record in short_run.losses]
    assert last.seg < first.seg


@pytest.mark.slow
def test_trained_model_beats_the_untrained_one_on_held_out_episodes(
    short_run: TrainResult,
) -> None:
    episodes = build_dataset(
        "synthetic", root=None, fold=0, split="val", shots=1, seed=5, episodes=30
    )
    trained, _ = load_model(short_run.last_checkpoint)
    torch.manual_seed(1)  # the initialisation the run started from
    untrained = build_dpnet(short_run.config, pretrained_backbone=False)
    trained_miou = evaluate(trained, episodes).miou_pfenet
    untrained_miou = evaluate(untrained, episodes).miou_pfenet
    assert trained_miou > untrained_miou + 10.0, (trained_miou, untrained_miou)


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = train(_options(tmp_path / "whole", steps=6))
    train(_options(tmp_path / "split", steps=3))
    resumed = train(_options(tmp_path / "split", steps=6, resume=True))
    assert resumed.start_step == 3 and resumed.steps == 6
    assert resumed.weights_sha256 == whole.weights_sha256
    # The last window (steps 5-6) lies wholly after the resume: identical losses.
    assert resumed.losses[-1] == whole.losses[-1]
    model, checkpoint = load_model(tmp_path / "split" / "last.pt")
    assert weights_sha256(model) == whole.weights_sha256
    assert checkpoint.train_state is not None and checkpoint.train_state["step"] == 6
    with pytest.raises(InputError, match="--resume"):
        train(_options(tmp_path / "split", steps=6))


@pytest.mark.slow
def test_validation_writes_best_and_last_with_metrics(tmp_path: Path) -> None:
    result = train(_options(tmp_path, steps=2, val_every=1, val_episodes=2))
    assert [record.step for record in result.validations] == [1, 2]
    assert result.best_checkpoint is not None
    best = load_checkpoint(result.best_checkpoint)
    assert "miou_pfenet" in best.meta["metrics"]
    assert best.train_state is None
    assert load_checkpoint(result.last_checkpoint).meta["metrics"]["step"] == 2.0


@pytest.mark.parametrize(
    ("dataset", "config", "expected"),
    [
        ("synthetic", None, ("tiny", 129)),
        ("pascal", None, ("paper", 321)),
        ("coco", None, ("paper", 641)),
        ("coco", "tiny", ("tiny", 129)),
    ],
)
def test_default_config_is_paper_for_real_data(dataset, config, expected, tmp_path):
    from dpnet.train.options import train_config

    chosen = train_config(TrainOptions(out=tmp_path, dataset=dataset, config=config))
    assert (chosen.name, chosen.input_size) == expected
