"""The ``folder`` dataset on generated folders of real files: episodes, splits, bad folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from folder_data import class_name, write_folder_dataset
from PIL import Image

from dpnet.data import DatasetOptions, build_dataset
from dpnet.data.folder import FolderDataset, folder_fold_classes
from dpnet_runtime.errors import DatasetError, InputError

NAMES = sorted(class_name(c) for c in (1, 2, 6, 7))  # the class folders, sorted


def _folder(root: Path, split: str = "val", **options: Any) -> FolderDataset:
    options.setdefault("episodes", 12)
    options.setdefault("shots", 1)
    dataset = build_dataset("folder", root=root, fold=options.pop("fold", 0), split=split,
                            seed=options.pop("seed", 0), **options)  # fmt: skip
    assert isinstance(dataset, FolderDataset)
    return dataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_folder_dataset(tmp_path / "mine", images=3)
    return tmp_path / "mine"


def test_episodes_read_the_files_and_follow_the_seed(root: Path) -> None:
    dataset = _folder(str(root), shots=2)  # a str root works too
    assert dataset.class_names == dict(enumerate(NAMES, start=1))
    assert dataset.class_ids == (1, 2, 3, 4)
    for index in range(len(dataset)):
        episode = dataset[index]
        name = dataset.class_names[episode.class_id]
        assert episode.query_name.startswith(f"{name}/")
        assert all(support.startswith(f"{name}/") for support in episode.support_names)
        assert episode.query_name not in episode.support_names
        files = root / episode.query_name
        image = np.asarray(Image.open(files.with_name(files.name + ".png")))
        mask = np.asarray(Image.open(files.with_name(files.name + "_mask.png")))
        np.testing.assert_array_equal(episode.query_image, image)
        np.testing.assert_array_equal(episode.query_mask, (mask == 255).astype(np.uint8))
    again = _folder(root, shots=2)
    assert [again[i].support_names for i in range(12)] == [
        dataset[i].support_names for i in range(12)
    ]
    other = _folder(root, shots=2, seed=1)
    assert [other.plan(i) for i in range(12)] != [dataset.plan(i) for i in range(12)]


def test_ignore_is_kept_when_masks_use_0_1_255(tmp_path: Path) -> None:
    write_folder_dataset(tmp_path / "mine", images=2, ignore_as_1_255=True)
    episode = _folder(tmp_path / "mine")[0]
    assert set(np.unique(episode.query_mask).tolist()) == {0, 1, 255}


def test_class_splits(root: Path) -> None:
    val = _folder(root, val_classes=(NAMES[2], NAMES[0]))
    train = _folder(root, "train", val_classes=(NAMES[2], NAMES[0]))
    assert val.class_ids == (1, 3) and train.class_ids == (2, 4)
    assert {val[i].class_id for i in range(12)} == {1, 3}
    assert _folder(root, fold=1, folds=2).class_ids == (3, 4)
    assert _folder(root, "train", fold=1, folds=2).class_ids == (1, 2)
    assert _folder(root, "train").class_ids == (1, 2, 3, 4)  # no split: every class in both
    assert [folder_fold_classes(7, fold, 3) for fold in range(3)] == [(1, 2), (3, 4, 5), (6, 7)]
    with pytest.raises(InputError, match=r"val classes \['cow'\] are not class folders"):
        _folder(root, val_classes=("cow",))
    with pytest.raises(InputError, match="fold 1 needs --folds N"):
        _folder(root, fold=1)
    with pytest.raises(InputError, match="4 classes cannot make 5 folds"):
        _folder(root, folds=5)
    with pytest.raises(InputError, match="the train split has no class"):
        _folder(root, "train", val_classes=tuple(NAMES))


def test_mixed_sizes_grey_rgba_and_16_bit_images(tmp_path: Path) -> None:
    folder = tmp_path / "mine" / "things"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pictures = {
        "grey": Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)),
        "rgba": Image.fromarray(rng.integers(0, 255, (50, 20, 4), dtype=np.uint8)),
        "deep": Image.fromarray((rng.integers(0, 65535, (24, 24))).astype(np.uint16)),
        "photo": Image.fromarray(rng.integers(0, 255, (33, 47, 3), dtype=np.uint8)),
    }
    for name, picture in pictures.items():
        suffix = ".jpg" if name == "photo" else ".png"
        picture.save(folder / f"{name}{suffix}")
        mask = np.zeros((picture.height, picture.width), np.uint8)
        mask[5:15, 5:15] = 255
        Image.fromarray(mask).save(folder / f"{name}_mask.png")
    episode = _folder(tmp_path / "mine", shots=3)[0]  # every image of the class
    names = (episode.query_name, *episode.support_names)
    images = dict(zip(names, (episode.query_image, *episode.support_images), strict=True))
    masks = dict(zip(names, (episode.query_mask, *episode.support_masks), strict=True))
    for name, picture in pictures.items():
        image = images[f"things/{name}"]
        assert image.dtype == np.uint8 and image.shape == (picture.height, picture.width, 3)
        assert masks[f"things/{name}"].shape == image.shape[:2]
        assert masks[f"things/{name}"][10, 10] == 1
    deep = images["things/deep"]
    assert deep.max() > 200 and deep.min() < 50  # 16-bit scaled to 8 bits, not all white


def _make_bad(root: Path, case: str) -> Path:
    """Break the folder one way; return the path the message must name."""
    cat = root / NAMES[0]
    if case == "empty class":
        (root / "zebra").mkdir()
        return root / "zebra"
    if case == "missing mask":
        (cat / "img1_mask.png").unlink()
        return cat / "img1.png"
    if case == "mask of another size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(cat / "img2_mask.png")
        return cat / "img2_mask.png"
    if case == "non-image file":
        (cat / "notes.txt").write_text("my cats")
        return cat / "notes.txt"
    if case == "unreadable image":
        (cat / "img0.png").write_bytes(b"not a png")
        return cat / "img0.png"
    if case == "mask without image":
        (cat / "img2.png").unlink()
        return cat / "img2_mask.png"
    if case == "fewer images than K+1":
        for index in (1, 2):
            (cat / f"img{index}.png").unlink()
            (cat / f"img{index}_mask.png").unlink()
        return cat
    shutil.rmtree(root)  # "no root"
    return root


BAD_CASES = [
    ("empty class", "class folder {path} holds no image"),
    ("missing mask", "image {path} has no mask: expected"),
    ("mask of another size", "mask {path} is 10 x 10 but its image is 64 x 64"),
    ("non-image file", "{path} is not an image or an <id>_mask.png mask"),
    ("unreadable image", "cannot read {path} as an image"),
    ("mask without image", "mask {path} has no image"),
    ("fewer images than K+1", "class '.*' \\({path}\\) has 1 images, 1 shots need 2"),
    ("no root", "folder dataset root {path} is not a folder"),
]


@pytest.mark.parametrize(("case", "message"), BAD_CASES, ids=[case for case, _ in BAD_CASES])
def test_bad_folders_name_the_path(root: Path, case: str, message: str) -> None:
    path = _make_bad(root, case)
    with pytest.raises(DatasetError, match=message.format(path=path)):
        _folder(root)


def test_options_route_to_the_folder_dataset_only() -> None:
    assert DatasetOptions(val_classes=("a",)).keywords("folder") == {"val_classes": ("a",)}
    assert DatasetOptions(folds=3).keywords("folder") == {"folds": 3}
    with pytest.raises(InputError, match="folds applies to the folder dataset only"):
        DatasetOptions(folds=3).keywords("pascal")
    with pytest.raises(InputError, match="splits-dir applies to the pascal and coco datasets"):
        DatasetOptions(splits_dir=Path("lists")).keywords("folder")
    with pytest.raises(InputError, match="--val-classes or --folds, not both"):
        DatasetOptions(val_classes=("a",), folds=2)


EVAL = [sys.executable, "-m", "dpnet.eval"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing mask", "fewer images than K+1", "non-image file"])
def test_cli_bad_folder_is_one_line(
    root: Path, tiny_checkpoint: Path, case: str, tmp_path: Path
) -> None:
    path = _make_bad(root, case)
    args = ["--ckpt", str(tiny_checkpoint), "--dataset", "folder", "--data-root", str(root)]
    completed = subprocess.run([*EVAL, *args], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


@pytest.mark.slow
def test_train_evaluate_and_bench_on_a_folder(tmp_path: Path) -> None:
    from dpnet.checkpoint import load_checkpoint
    from dpnet.eval.evaluate import EvalRequest, evaluate_checkpoint

    root = tmp_path / "mine"
    write_folder_dataset(root, images=3)
    test_classes = f"{NAMES[0]},{NAMES[2]}"
    run = tmp_path / "run"
    train = [
        sys.executable, "-m", "dpnet.train", "--dataset", "folder", "--data-root", str(root),
        "--val-classes", test_classes, "--preset", "tiny", "--steps", "2", "--batch-size", "2",
        "--val-episodes", "2", "--threads", "2", "--out", str(run),
    ]  # fmt: skip
    trained = subprocess.run(train, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint.meta["dataset"] == "folder" and checkpoint.meta["metrics"]["step"] == 2

    request = EvalRequest(
        ckpt=run / "last.pt", dataset="folder", data_root=root, episodes=6, device="cpu",
        data_options=DatasetOptions(val_classes=tuple(test_classes.split(","))),
    )  # fmt: skip
    result = evaluate_checkpoint(request)
    assert result.episodes == 6
    assert {item.name for item in result.per_class} <= {NAMES[0], NAMES[2]}

    report = tmp_path / "bench.json"
    bench = [
        sys.executable, "-c", "from dpnet_bench.cli import main; main()",
        "--ckpt", str(run / "last.pt"), "--dataset", "folder", "--data-root", str(root),
        "--val-classes", test_classes, "--episodes", "2", "--warmup-s", "0", "--threads", "2",
        "--backends", "torch,ort", "--json", str(report),
    ]  # fmt: skip
    benched = subprocess.run(bench, capture_output=True, text=True, timeout=600)
    assert benched.returncode == 0, benched.stdout + benched.stderr
    data = json.loads(report.read_text())
    assert data["options"]["dataset"] == "folder"
    assert data["options"]["data_options"]["val_classes"] == test_classes.split(",")
    assert [row["status"] for row in data["results"]] == ["passed", "passed"]


def test_a_pascal_checkpoint_evaluates_a_folder_without_its_fold(
    root: Path, tmp_path: Path
) -> None:
    """New classes need no training: a model of PASCAL fold 2 segments the folder's classes."""
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.eval.evaluate import EvalRequest, evaluate_checkpoint
    from dpnet.model.dpnet import build_dpnet

    checkpoint = tmp_path / "pascal_fold2.pt"
    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    save_checkpoint(checkpoint, model, make_meta(dataset="pascal", fold=2, shots=1, epoch=0))
    request = EvalRequest(ckpt=checkpoint, dataset="folder", data_root=root, episodes=2,
                          device="cpu")  # fmt: skip
    assert evaluate_checkpoint(request).episodes == 2
