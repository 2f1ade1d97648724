"""The dpnet-checkpoint format: round trip, atomic write, and one-line errors for bad files."""

from __future__ import annotations

import pytest
import torch

from dpnet.checkpoint import load_checkpoint, load_model, make_meta, save_checkpoint
from dpnet.config import preset
from dpnet.model import build_dpnet
from dpnet_runtime.errors import IncompatibleModelError, ModelFileError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, make_meta(dataset="synthetic", fold=0, shots=1, epoch=3))
    return model, path


def test_round_trip_restores_config_weights_and_meta(saved):
    model, path = saved
    loaded, checkpoint = load_model(path)
    assert loaded.config == model.config
    assert checkpoint.meta["epoch"] == 3 and checkpoint.meta["dpnet_version"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind


def test_truncated_checkpoint_is_a_one_line_error(saved, tmp_path):
    _, path = saved
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="truncated or not a PyTorch file") as info:
        load_checkpoint(truncated)
    assert "\n" not in str(info.value)


def test_plain_state_dict_is_not_a_dpnet_checkpoint(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match="is not a dpnet checkpoint"):
        load_checkpoint(path)


def test_other_version_is_incompatible(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    other = tmp_path / "v99.pt"
    torch.save(payload, other)
    with pytest.raises(IncompatibleModelError, match="format version 99"):
        load_checkpoint(other)


def test_missing_and_text_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="truncated or not a PyTorch file"):
        load_checkpoint(text)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dpnet-checkpoint", "obj": object()}, path)
    with pytest.raises(ModelFileError):
        load_checkpoint(path)


def test_mismatched_weights_are_reported(saved, tmp_path):
    _, path = saved
    payload = torch.load(path, weights_only=True)
    payload["config"]["feature_channels"] = 32
    other = tmp_path / "mismatch.pt"
    torch.save(payload, other)
    with pytest.raises(ModelFileError, match="do not match its config"):
        load_model(other)


def test_backbone_weights_file_loads_into_the_trunk(tmp_path):
    torch.manual_seed(1)
    source = build_dpnet(preset("tiny"), pretrained_backbone=False)
    weights = tmp_path / "resnet50-test.pth"
    torch.save(
        {k: v for k, v in source.backbone.state_dict().items() if not k.startswith("reduce.")},
        weights,
    )
    model = build_dpnet(preset("tiny"), backbone_weights=weights)
    assert torch.equal(
        model.backbone.layer3[0].conv1.weight, source.backbone.layer3[0].conv1.weight
    )
    with pytest.raises(ModelFileError, match="do not exist"):
        build_dpnet(preset("tiny"), backbone_weights=tmp_path / "missing.pth")


def test_random_backbone_warns_loudly(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(UserWarning, match="backbone is RANDOM"):
        build_dpnet(preset("tiny"))
