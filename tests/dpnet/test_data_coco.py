"""COCO-20i on a tiny fake COCO 2014 tree: real JPEGs and instances JSON files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dpnet.data import DatasetOptions, build_dataset
from dpnet.data.coco import CocoDataset, rle_to_mask
from dpnet_runtime.errors import DatasetError, InputError

# The 80 real COCO category ids (1..90 with 10 gaps); contiguous class = position + 1.
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
HEIGHT, WIDTH = 20, 30


def _rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString: the inverse of the decoder under test."""
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            chars.append(chr((char | 0x20 if more else char) + 48))
    return "".join(chars)


def _square(x: int, y: int, side: int) -> list[list[float]]:
    return [[x, y, x + side - 1, y, x + side - 1, y + side - 1, x, y + side - 1]]


def _write_split(root: Path, folder: str, images: dict[int, list[tuple[int, Any]]]) -> None:
    """images: image id -> [(category id, segmentation)]."""
    (root / folder).mkdir(parents=True)
    coco: dict[str, list[dict[str, Any]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c, "name": f"cat{c}"} for c in CATEGORY_IDS],
    }
    rng = np.random.default_rng(0)
    for image_id, instances in images.items():
        file_name = f"COCO_{folder}_{image_id:012d}.jpg"
        pixels = rng.integers(0, 255, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder / file_name)
        coco["images"].append(
            {"id": image_id, "file_name": file_name, "height": HEIGHT, "width": WIDTH}
        )
        for category_id, segmentation in instances:
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": segmentation,
                    "iscrowd": int(isinstance(segmentation, dict)),
                    "area": 1.0,
                }
            )
    (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    # Category id 1 = class 1 (fold 0 interleaved), id 2 = class 2 (fold 1), id 5 = class 5.
    crowd = np.zeros((HEIGHT, WIDTH), dtype=bool)
    crowd[10:15, 20:26] = True
    flat = crowd.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(int), [2]])) != 0)
    counts = np.diff(np.concatenate([[0], change])).tolist()
    _write_split(
        root,
        "val2014",
        {
            1: [(1, _square(2, 2, 6))],
            2: [(1, _square(4, 4, 8)), (2, _square(14, 2, 5))],
            3: [(5, _square(1, 1, 4)), (1, {"size": [HEIGHT, WIDTH], "counts": counts})],
        },
    )
    _write_split(
        root,
        "train2014",
        {
            10: [(2, _square(2, 2, 6)), (1, _square(12, 2, 6))],
            11: [(2, _square(3, 3, 5))],
            12: [(3, _square(3, 3, 5))],
            13: [(3, _square(6, 6, 5)), (2, _square(16, 6, 3))],
        },
    )
    return root


def _coco(root: Path, split: str, **options: Any) -> CocoDataset:
    dataset = build_dataset(
        "coco", root=root, fold=0, split=split, shots=1, seed=0, episodes=8, **options
    )
    assert isinstance(dataset, CocoDataset)
    return dataset


def test_val_masks_from_polygons_and_crowd_rle(coco_root: Path) -> None:
    dataset = _coco(coco_root, "val")
    assert dataset.class_ids == tuple(range(1, 81, 4)) and dataset.class_names[1] == "cat1"
    _, label = dataset.load("val2014/COCO_val2014_000000000002.jpg")
    assert (label == 1).sum() == 64 and (label == 2).sum() == 25  # 8x8 and 5x5 squares
    _, label = dataset.load("val2014/COCO_val2014_000000000003.jpg")
    assert (label == 1).sum() == 30 and label[10:15, 20:26].min() == 1  # the crowd RLE
    assert (label == 5).sum() == 16
    for index in range(len(dataset)):
        episode = dataset[index]
        assert episode.class_id == 1
        assert episode.query_name != episode.support_names[0]
        assert episode.query_image.shape == (HEIGHT, WIDTH, 3)
        assert (episode.query_mask == 1).any() and (episode.support_masks[0] == 1).any()


def test_train_episodes_never_have_a_fold_class_as_foreground(coco_root: Path) -> None:
    dataset = _coco(coco_root, "train")
    assert 1 not in dataset.class_ids and len(dataset.class_ids) == 60
    for index in range(len(dataset)):
        episode = dataset[index]
        assert episode.class_id in (2, 3)
        _, label = dataset.load(episode.query_name)
        assert np.array_equal(episode.query_mask == 1, label == episode.class_id)
        assert not (episode.query_mask[label == 1] == 1).any()


def test_consecutive_split_and_same_seed_same_episodes(coco_root: Path) -> None:
    dataset = _coco(coco_root, "val", fold_split="consecutive")
    assert dataset.class_ids == tuple(range(1, 21))
    plans = [dataset.plan(i) for i in range(8)]
    assert {plan.class_id for plan in plans} <= {1, 2, 5}
    assert plans == [_coco(coco_root, "val", fold_split="consecutive").plan(i) for i in range(8)]


def test_hsnet_split_lists(coco_root: Path, tmp_path: Path) -> None:
    lists: dict[str, list[str]] = {str(k): [] for k in range(80)}
    lists["0"] = ["val2014/COCO_val2014_000000000001.jpg", "val2014/COCO_val2014_000000000003.jpg"]
    path = tmp_path / "splits" / "hsnet" / "coco" / "val" / "fold0.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as stream:
        json.dump(lists, stream)
    dataset = _coco(coco_root, "val", split_lists=True, splits_dir=tmp_path / "splits")
    names = {dataset.plan(i).query_name for i in range(8)}
    assert names == set(lists["0"])
    with pytest.raises(InputError, match="interleaved"):
        _coco(coco_root, "val", split_lists=True, fold_split="consecutive")


def test_wrong_layout_and_broken_annotations(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"lacks train2014/, val2014/, annotations/; expected"):
        _coco(tmp_path, "val")
    (coco_root / "annotations" / "instances_val2014.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        _coco(coco_root, "val")
    (coco_root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DatasetError, match=r"instances_val2014\.json"):
        _coco(coco_root, "val")


def test_compressed_and_uncompressed_rle_decode_alike() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((7, 9)) < 0.4
    flat = mask.flatten(order="F").astype(int)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])) != 0)
    counts = np.diff(np.concatenate([[0], change])).tolist()
    assert np.array_equal(rle_to_mask({"size": [7, 9], "counts": counts}), mask)
    assert np.array_equal(rle_to_mask({"size": [7, 9], "counts": _rle_string(counts)}), mask)


def test_dataset_options_route_the_coco_split_and_refuse_it_elsewhere() -> None:
    assert DatasetOptions(coco_split="consecutive").keywords("coco") == {
        "fold_split": "consecutive"
    }
    assert DatasetOptions().keywords("synthetic") == {}
    with pytest.raises(InputError, match="coco dataset only"):
        DatasetOptions(coco_split="consecutive").keywords("pascal")
    with pytest.raises(InputError, match="interleaved, consecutive"):
        DatasetOptions(coco_split="alphabetical").keywords("coco")


@pytest.mark.slow
def test_evaluation_uses_the_chosen_coco_split(tmp_path: Path) -> None:
    from dpnet.checkpoint import make_meta, save_checkpoint
    from dpnet.config import preset
    from dpnet.eval.evaluate import EvalRequest, evaluate_checkpoint
    from dpnet.model.dpnet import build_dpnet

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    # Classes 1 and 2, two images each: fold 0 holds class 1 only when interleaved, both when
    # consecutive (classes 1..20).
    images = {i + 1: [(1 + i % 2, _square(2 + i, 2, 6))] for i in range(4)}
    _write_split(root, "val2014", images)
    _write_split(root, "train2014", {})
    ckpt = tmp_path / "tiny.pt"
    model = build_dpnet(preset("tiny"), pretrained_backbone=False)
    save_checkpoint(ckpt, model, make_meta(dataset="coco", fold=0, shots=1, epoch=0))
    seen = {}
    for split in ("interleaved", "consecutive"):
        request = EvalRequest(
            ckpt=ckpt, dataset="coco", data_root=root, fold=0, episodes=8, device="cpu",
            data_options=DatasetOptions(coco_split=split),
        )  # fmt: skip
        seen[split] = {item.class_id for item in evaluate_checkpoint(request).per_class}
    assert seen == {"interleaved": {1}, "consecutive": {1, 2}}


def test_missing_images_are_counted_or_skipped(coco_root: Path) -> None:
    (coco_root / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(
        DatasetError,
        match=r"instances_val2014.json names 1 of 3 images that .*coco lacks \(first: .*"
        r"val2014/COCO_val2014_000000000003.jpg\); pass --skip-missing",
    ):
        _coco(coco_root, "val")
    dataset = _coco(coco_root, "val", skip_missing=True)
    assert dataset.pools[1] == (
        "val2014/COCO_val2014_000000000001.jpg", "val2014/COCO_val2014_000000000002.jpg"
    )  # fmt: skip
    assert {dataset.plan(i).query_name for i in range(8)} == set(dataset.pools[1])


def test_custom_flat_lists_given_as_str_imply_list_pools(coco_root: Path, tmp_path: Path) -> None:
    lists: dict[str, list[str]] = {str(k): [] for k in range(80)}
    lists["0"] = ["val2014/COCO_val2014_000000000002.jpg", "val2014/COCO_val2014_000000000003.jpg"]
    path = tmp_path / "mine" / "val" / "fold0.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as stream:
        json.dump(lists, stream)
    dataset = _coco(coco_root, "val", splits_dir=str(tmp_path / "mine"))
    assert dataset.pools[1] == tuple(lists["0"])
    assert {dataset.plan(i).query_name for i in range(8)} == set(lists["0"])
