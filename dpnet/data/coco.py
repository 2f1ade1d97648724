"""COCO-20i from a user-given COCO 2014 root: instance annotations turned into class masks.

Expected layout::

    ROOT/train2014/COCO_train2014_<id>.jpg
    ROOT/val2014/COCO_val2014_<id>.jpg
    ROOT/annotations/instances_train2014.json
    ROOT/annotations/instances_val2014.json

The 80 categories are numbered 1..80 in increasing COCO category id (the usual contiguous
order, the mask value of HSNet's lists). Fold splits: ``interleaved`` (default, PFENet/HSNet:
fold i = classes c with (c - 1) mod 4 == i) or ``consecutive`` (fold i = 20i+1..20i+20).
``train`` episodes use train2014 and the 60 other classes, ``val`` episodes val2014 and the
fold's 20. The class is drawn uniformly, then query and supports among the images holding it
(HSNet's COCO protocol). Image pools come from the annotations, or with
``split_lists=True`` (interleaved only) from HSNet's packaged lists, or from custom lists in
``splits_dir`` (``{trn,val}/fold{i}.json.gz``: ``{"<class - 1>": ["val2014/<file>", ...]}``).
Every pooled image must exist under the root: otherwise the error says how many are missing
and which first; ``skip_missing`` leaves them out (a subset of COCO) with a warning.

Class masks: every instance (crowd included, as in pycocotools' ``annToMask``) is painted
with its class, larger instances first so that small objects stay visible. Polygons are
rasterised with PIL and RLE decoded in numpy (compressed and uncompressed), one code path on
every machine (pycocotools is not needed); PIL's polygon fill may differ from pycocotools'
by a pixel on edges. There is no ignore label in COCO masks.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dpnet.data.episode import PooledDataset, split_class_ids
from dpnet.data.pascal import check_root, find_missing, list_folder, read_image
from dpnet_runtime.errors import DatasetError, InputError, OptionError

__all__ = ["COCO_SPLITS", "CocoDataset", "annotations_to_label", "rle_to_mask"]

COCO_SPLITS = ("interleaved", "consecutive")
"""COCO-20i fold splits: PFENet/HSNet's interleaved classes (default) or 20 consecutive ones."""

NUM_CLASSES = 80
DEFAULT_VAL_EPISODES = 1000
DEFAULT_TRAIN_EPISODES = 20_000
_LAYOUT = (
    "expected ROOT/train2014/, ROOT/val2014/ and "
    "ROOT/annotations/instances_{train,val}2014.json (COCO 2014)"
)
_SPLIT_FOLDER = {"train": "train2014", "val": "val2014"}
_LIST_FOLDER = {"train": "trn", "val": "val"}


def _rle_string_counts(text: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            char = ord(text[position]) - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (``{"size": [h, w], "counts": list or str}``) to [h, w] bool.

    Runs alternate background / foreground in column-major order, starting with background.
    """
    height, width = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _rle_string_counts(counts)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != height * width:
        raise DatasetError(f"RLE covers {flat.size} pixels, expected {height} x {width}")
    return flat.reshape((height, width), order="F")


def _instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, dict):
        return rle_to_mask(segmentation)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in segmentation:
        if len(polygon) >= 6:
            draw.polygon([float(x) for x in polygon], fill=1)
    return np.asarray(canvas).astype(bool)


def annotations_to_label(
    annotations: Sequence[dict[str, Any]], height: int, width: int, class_of: dict[int, int]
) -> np.ndarray:
    """[H, W] uint8 class-label map (0 background, 1..80) from one image's instances.

    Args:
        annotations: COCO instance annotations of the image.
        height, width: image size.
        class_of: COCO category id -> contiguous class 1..80.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    for annotation in sorted(annotations, key=lambda a: -float(a.get("area", 0.0))):
        mask = _instance_mask(annotation["segmentation"], height, width)
        label[mask] = class_of[annotation["category_id"]]
    return label


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}; {_LAYOUT}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); re-download it") from exc
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path} holds a JSON {type(data).__name__}, not a COCO annotation object"
        )
    return data


class CocoDataset(PooledDataset):
    """COCO-20i episodes read from ``root`` (layout in the module docstring).

    Args:
        root: the COCO 2014 folder.
        fold: 0..3; split: ``train`` or ``val``; shots: K; seed: the episode seed.
        episodes: number of episodes; None: 20000 for ``train``, 1000 for ``val``.
        fold_split: ``interleaved`` (default) or ``consecutive``.
        split_lists: take the image pools from HSNet's lists (interleaved only).
        splits_dir: folder holding ``{trn,val}/fold*.json.gz`` (or ``hsnet/coco/...``);
            ``Path`` or ``str``; implies ``split_lists``; default: the packaged lists.
        skip_missing: leave out pooled images the root lacks instead of failing.

    Raises:
        DatasetError: missing root, folder, annotation file or list; pooled images missing
            under the root (without ``skip_missing``); unreadable image.
        InputError: unknown fold split, or split lists with the consecutive split.
    """

    def __init__(
        self,
        root: Path | None,
        *,
        fold: int,
        split: str,
        shots: int,
        seed: int,
        episodes: int | None = None,
        fold_split: str = "interleaved",
        split_lists: bool = False,
        splits_dir: Path | str | None = None,
        skip_missing: bool = False,
    ) -> None:
        if fold_split not in COCO_SPLITS:
            raise OptionError(f"fold_split must be one of {COCO_SPLITS}, got {fold_split!r}")
        split_lists = split_lists or splits_dir is not None
        if split_lists and fold_split != "interleaved":
            raise InputError("HSNet's COCO split lists exist for the interleaved fold split only")
        self.root = check_root(root, ("train2014", "val2014", "annotations"), _LAYOUT, "COCO-20i")
        class_ids = split_class_ids(
            NUM_CLASSES, fold, split, interleaved=fold_split == "interleaved"
        )
        folder = _SPLIT_FOLDER["train" if split == "train" else "val"]
        coco = _load_json(self.root / "annotations" / f"instances_{folder}.json")
        try:
            categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
            self._class_of = {int(c["id"]): i for i, c in enumerate(categories, start=1)}
            names = {int(im["id"]): f"{folder}/{im['file_name']}" for im in coco["images"]}
            self._size = {
                names[int(im["id"])]: (int(im["height"]), int(im["width"])) for im in coco["images"]
            }
            self._by_name: dict[str, list[dict[str, Any]]] = {name: [] for name in self._size}
            for annotation in coco["annotations"]:
                self._by_name[names[int(annotation["image_id"])]].append(annotation)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"instances_{folder}.json under {self.root} is not a COCO instances file "
                f"(missing {exc}); {_LAYOUT}"
            ) from exc
        if len(categories) != NUM_CLASSES:
            raise DatasetError(
                f"instances_{folder}.json has {len(categories)} categories, expected "
                f"{NUM_CLASSES}; use the COCO 2014 instance annotations"
            )
        if split_lists:
            source = list_folder(splits_dir, "coco") / _LIST_FOLDER[split] / f"fold{fold}.json.gz"
            pools = self._list_pools(source)
        else:
            source = self.root / "annotations" / f"instances_{folder}.json"
            pools = self._annotation_pools()
        missing = find_missing(
            (name for c in class_ids for name in pools.get(c, ())),
            lambda name: (self.root / name,),
            skip_missing=skip_missing,
            source=str(source),
            root=self.root,
        )
        pools = {c: tuple(n for n in names if n not in missing) for c, names in pools.items()}
        default = DEFAULT_TRAIN_EPISODES if split == "train" else DEFAULT_VAL_EPISODES
        super().__init__(
            pools=pools,
            entries=None,
            sampling="seed",
            fold=fold,
            split=split,
            shots=shots,
            seed=seed,
            episodes=default if episodes is None else episodes,
            class_ids=class_ids,
            class_names={self._class_of[int(c["id"])]: str(c["name"]) for c in categories},
        )

    def _annotation_pools(self) -> dict[int, tuple[str, ...]]:
        pools: dict[int, dict[str, None]] = {}
        for name, instances in self._by_name.items():
            for annotation in instances:
                pools.setdefault(self._class_of[annotation["category_id"]], {})[name] = None
        return {class_id: tuple(names) for class_id, names in pools.items()}

    @staticmethod
    def _list_pools(path: Path) -> dict[int, tuple[str, ...]]:
        try:
            with gzip.open(path, "rt", encoding="utf-8") as stream:
                lists = json.load(stream)
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read COCO split list {path}: {exc}") from exc
        if not isinstance(lists, dict):
            raise DatasetError(f"COCO split list {path} is not a JSON object of class lists")
        return {int(key) + 1: tuple(names) for key, names in lists.items()}

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and class-label map of ``name`` (``val2014/COCO_val2014_<id>.jpg``)."""
        if name not in self._by_name:
            raise DatasetError(f"{name} is not in the annotations under {self.root}; {_LAYOUT}")
        image = read_image(self.root / name, self.root, _LAYOUT)
        height, width = self._size[name]
        if image.shape[:2] != (height, width):
            raise DatasetError(
                f"{self.root / name} is {image.shape[1]} x {image.shape[0]}, the annotations "
                f"say {width} x {height}; re-download the image"
            )
        return image, annotations_to_label(self._by_name[name], height, width, self._class_of)
