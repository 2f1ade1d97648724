"""PASCAL-5i on a tiny fake VOC2012 tree of real JPEG/PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dpnet.data import build_dataset
from dpnet.data.pascal import PascalDataset, packaged_splits, read_hsnet_list
from dpnet_runtime.errors import DatasetError

# name -> classes painted in its label (class 1 is in test fold 0, 6 and 11 are not).
IMAGES = {
    "2008_000001": (1,),
    "2008_000002": (1, 6),
    "2008_000003": (1,),
    "2008_000004": (6, 1),
    "2008_000005": (6,),
    "2008_000006": (11,),
    "2008_000007": (11, 6),
}
LISTS = {
    "val/fold0.txt": ["2008_000001__01", "2008_000002__01", "2008_000003__01"],
    "trn/fold0.txt": ["2008_000001__01", "2008_000003__01"],
    "trn/fold1.txt": ["2008_000002__06", "2008_000004__06", "2008_000005__06"],
    "trn/fold2.txt": ["2008_000006__11", "2008_000007__11"],
    "trn/fold3.txt": [],
}


def _label(classes: tuple[int, ...]) -> np.ndarray:
    label = np.zeros((24, 32), dtype=np.uint8)
    for slot, class_id in enumerate(classes):
        label[4:20, 2 + 15 * slot : 14 + 15 * slot] = class_id
        label[3, 2 + 15 * slot : 14 + 15 * slot] = 255  # an ignore border above each object
    return label


@pytest.fixture
def voc(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    rng = np.random.default_rng(0)
    for name, classes in IMAGES.items():
        pixels = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(_label(classes)).save(root / "SegmentationClassAug" / f"{name}.png")
    splits = tmp_path / "splits"
    for relative, lines in LISTS.items():
        path = splits / "hsnet" / "pascal" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in lines))
    return root, splits


def _pascal(voc: tuple[Path, Path], split: str, **options: Any) -> PascalDataset:
    root, splits = voc
    options.setdefault("episodes", 6)
    dataset = build_dataset(
        "pascal", root=root, fold=0, split=split, shots=1, seed=0, splits_dir=splits, **options
    )
    assert isinstance(dataset, PascalDataset)
    return dataset


def test_val_episodes_follow_the_list_and_read_the_real_files(voc: tuple[Path, Path]) -> None:
    dataset = _pascal(voc, "val")
    for index in range(6):
        episode = dataset[index]
        assert episode.query_name == LISTS["val/fold0.txt"][index % 3].split("__")[0]
        assert episode.class_id == 1
        assert episode.support_names[0] != episode.query_name
        assert episode.query_image.shape == (24, 32, 3) and episode.query_image.dtype == np.uint8
        label = np.asarray(
            Image.open(voc[0] / "SegmentationClassAug" / f"{episode.query_name}.png")
        )
        assert np.array_equal(episode.query_mask == 1, label == 1)
        assert np.array_equal(episode.query_mask == 255, label == 255)


def test_train_episodes_never_have_a_fold_class_as_foreground(voc: tuple[Path, Path]) -> None:
    dataset = _pascal(voc, "train", episodes=None)
    assert len(dataset) == 5  # the trn lists of folds 1-3
    for index in range(len(dataset)):
        episode = dataset[index]
        assert episode.class_id in (6, 11)
        for name, mask in zip(
            (episode.query_name, *episode.support_names),
            (episode.query_mask, *episode.support_masks),
            strict=True,
        ):
            label = _label(IMAGES[name])
            assert not (mask[label == 1] == 1).any()  # class 1 pixels are background here
            assert np.array_equal(mask == 1, label == episode.class_id)


def test_seed_sampling_is_reproducible(voc: tuple[Path, Path]) -> None:
    first = [_pascal(voc, "train", sampling="seed")[i].support_names for i in range(6)]
    again = [_pascal(voc, "train", sampling="seed")[i].support_names for i in range(6)]
    assert first == again


def test_wrong_layout_names_the_expected_folders(voc: tuple[Path, Path], tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(DatasetError, match=r"lacks JPEGImages/, SegmentationClassAug/; expected"):
        _pascal((flat, voc[1]), "val")
    with pytest.raises(DatasetError, match="needs --data-root"):
        _pascal((None, voc[1]), "val")  # type: ignore[arg-type]


def test_missing_image_file_is_a_dataset_error(voc: tuple[Path, Path]) -> None:
    (voc[0] / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2008_000001\.jpg"):
        _pascal(voc, "val")[0]


def test_list_with_a_foreign_class_is_rejected(voc: tuple[Path, Path]) -> None:
    (voc[1] / "hsnet" / "pascal" / "val" / "fold0.txt").write_text("2008_000005__06\n")
    with pytest.raises(DatasetError, match="outside the val classes"):
        _pascal(voc, "val")


def _touch_listed_files(root: Path, fold: int, split: str) -> None:
    """Empty image and label files for every name of the packaged lists (only existence is
    checked before an episode is read)."""
    lists = packaged_splits() / "hsnet" / "pascal"
    files = [lists / "val" / f"fold{fold}.txt"] if split == "val" else [
        lists / "trn" / f"fold{other}.txt" for other in range(4) if other != fold
    ]  # fmt: skip
    for name in {name for file in files for name, _ in read_hsnet_list(file)}:
        (root / "JPEGImages" / f"{name}.jpg").touch()
        (root / "SegmentationClassAug" / f"{name}.png").touch()


def test_packaged_lists_match_their_folds(voc: tuple[Path, Path]) -> None:
    _touch_listed_files(voc[0], 0, "val")
    _touch_listed_files(voc[0], 3, "train")
    dataset = PascalDataset(voc[0], fold=0, split="val", shots=1, seed=0)
    assert len(dataset.entries) == 346 and len(dataset) == 1000
    assert dataset.plan(0).query_name == "2007_000033"
    assert dataset.plan(346).query_name == "2007_000033"
    train = PascalDataset(voc[0], fold=3, split="train", shots=5, seed=0)
    assert {c for _, c in train.entries} == set(range(1, 16))


def test_malformed_list_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("2008_000001_01\n")
    with pytest.raises(DatasetError, match="malformed line"):
        read_hsnet_list(path)


def _flat_lists(tmp_path: Path, lines: list[str]) -> Path:
    """A custom list folder in the flat layout: DIR/val/fold0.txt."""
    folder = tmp_path / "my_lists"
    (folder / "val").mkdir(parents=True)
    (folder / "val" / "fold0.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


def test_custom_flat_lists_given_as_str(voc: tuple[Path, Path], tmp_path: Path) -> None:
    lists = _flat_lists(tmp_path, ["2008_000003__01", "2008_000001__01"])
    dataset = PascalDataset(str(voc[0]), fold=0, split="val", shots=1, seed=0,
                            splits_dir=str(lists))  # fmt: skip
    assert dataset.entries == (("2008_000003", 1), ("2008_000001", 1))
    assert dataset.plan(1).query_name == "2008_000001"


def test_missing_listed_images_are_counted_or_skipped(
    voc: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = voc[0]
    (root / "JPEGImages" / "2008_000001.jpg").unlink()
    (root / "SegmentationClassAug" / "2008_000006.png").unlink()
    with pytest.raises(
        DatasetError,
        match=r"val/fold0.txt names 1 of 3 images that .*VOC2012 lacks \(first: .*"
        r"JPEGImages/2008_000001.jpg\); pass --skip-missing to use the 2 that exist",
    ):
        _pascal(voc, "val")
    with caplog.at_level("WARNING"):
        dataset = _pascal(voc, "val", skip_missing=True)
    assert [name for name, _ in dataset.entries] == ["2008_000002", "2008_000003"]
    assert {dataset[i].query_name for i in range(6)} == {"2008_000002", "2008_000003"}
    assert "1 of 3 images named by" in caplog.text and "2 list entries remain" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        train = _pascal(voc, "train", skip_missing=True)
    # Class 11 keeps one image (2008_000007): too few for a 1-shot episode, left out.
    assert {class_id for _, class_id in train.entries} == {6}
    assert "classes [11] have fewer than 2 images" in caplog.text


def _tiny_checkpoint(path: Path) -> Path:
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.model.dpnet import build_dpnet

    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    save_checkpoint(path, model, make_meta(dataset="pascal", fold=0, shots=1, epoch=0))
    return path


@pytest.mark.slow
def test_subset_root_evaluates_from_the_cli(voc: tuple[Path, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    root = voc[0]  # a VOC-layout subset of 7 images
    lists = _flat_lists(tmp_path, ["2008_000001__01", "2008_000002__01", "2009_999999__01"])
    command = [
        sys.executable, "-m", "dpnet.eval", "--ckpt", str(_tiny_checkpoint(tmp_path / "m.pt")),
        "--dataset", "pascal", "--data-root", str(root), "--episodes", "4",
    ]  # fmt: skip
    missing = subprocess.run([*command, "--splits-dir", str(lists)], capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [
        f"error: {lists}/val/fold0.txt names 1 of 3 images that {root} lacks (first: "
        f"{root}/JPEGImages/2009_999999.jpg); pass --skip-missing to use the 2 that exist, "
        "or --splits-dir with lists of your subset"
    ]
    skipped = subprocess.run([*command, "--splits-dir", str(lists), "--skip-missing"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    assert "2 list entries remain" in skipped.stderr
    assert "1 aeroplane" in skipped.stdout and "mIoU" in skipped.stdout
