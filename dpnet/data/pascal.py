"""PASCAL-5i from a user-given VOC2012 root with SBD-augmented labels.

Expected layout::

    ROOT/JPEGImages/<id>.jpg              VOC2012 images
    ROOT/SegmentationClassAug/<id>.png    labels 0..20, 255 ignore (SBD-augmented)

Fold i tests classes 5i+1..5i+5. Episodes come from HSNet's split lists packaged in
``dpnet/data/splits/hsnet/pascal`` (``<id>__<class>`` per line): ``val`` uses
``val/fold{i}.txt``, ``train`` concatenates the ``trn`` lists of the three other folds, so
training images are listed only for training classes and a test class is never a training
foreground (it is background in those masks). With ``sampling="list"`` (default, HSNet's
protocol) query i is line ``i mod len``; with ``sampling="seed"`` the class is drawn
uniformly first.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from dpnet.data.episode import ListEntry, PooledDataset, group_by_class, split_class_ids
from dpnet_runtime.errors import DatasetError
from dpnet_runtime.preprocess import open_image_file

__all__ = [
    "PASCAL_CLASSES",
    "PascalDataset",
    "read_hsnet_list",
    "read_image",
    "read_label",
]

PASCAL_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
_LAYOUT = (
    "expected ROOT/JPEGImages/<id>.jpg and ROOT/SegmentationClassAug/<id>.png "
    "(VOC2012 + SBD-augmented labels)"
)
DEFAULT_VAL_EPISODES = 1000


def packaged_splits() -> Path:
    """Folder of the split lists shipped inside the package."""
    return Path(str(resources.files("dpnet.data") / "splits"))


def read_hsnet_list(path: Path) -> list[ListEntry]:
    """Entries of an HSNet PASCAL list (``<voc_id>__<class>`` per line).

    Raises:
        DatasetError: missing file or a malformed line.
    """
    try:
        lines = path.read_text(encoding="utf-8").split()
    except OSError as exc:
        raise DatasetError(f"cannot read split list {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"split list {path} is not a text file ({exc.reason})") from exc
    entries = []
    for line in lines:
        name, sep, class_text = line.rpartition("__")
        if not sep or not class_text.isdigit():
            raise DatasetError(f"{path}: malformed line {line!r}, expected <voc_id>__<class>")
        entries.append((name, int(class_text)))
    return entries


def read_image(path: Path, root: Path, layout: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file; a missing, unreadable or too large file (over
    PIL's pixel limit, :func:`~dpnet_runtime.preprocess.open_image_file`) is a DatasetError."""
    try:
        with open_image_file(path, DatasetError) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} under dataset root {root}; {layout}") from exc


def read_label(path: Path, root: Path, layout: str) -> np.ndarray:
    """[H, W] uint8 class-label map of a single-channel (or palette) PNG (a DatasetError when
    missing, unreadable, too large or of another mode)."""
    try:
        with open_image_file(path, DatasetError) as label:
            if label.mode not in ("L", "P"):
                raise DatasetError(f"{path}: label mode {label.mode}, expected 8-bit L or P")
            return np.asarray(label)
    except OSError as exc:
        raise DatasetError(f"cannot read {path} under dataset root {root}; {layout}") from exc


def check_root(root: Path | None, folders: tuple[str, ...], layout: str, dataset: str) -> Path:
    """``root`` as a Path after checking that every folder exists."""
    if root is None:
        raise DatasetError(f"{dataset} needs --data-root; {layout}")
    root = Path(root)
    missing = [f"{name}/" for name in folders if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"{dataset} root {root} lacks {', '.join(missing)}; {layout}")
    return root


class PascalDataset(PooledDataset):
    """PASCAL-5i episodes read from ``root``.

    Args:
        root: the VOC2012 folder (layout in the module docstring).
        fold: 0..3; split: ``train`` or ``val``; shots: K; seed: the episode seed.
        episodes: number of episodes; None: the list's length for ``train``, 1000 for ``val``.
        sampling: ``list`` (query i = line i mod len) or ``seed``.
        splits_dir: folder holding ``hsnet/pascal/{trn,val}/fold*.txt`` (default: packaged).

    Raises:
        DatasetError: missing root, folder or list; unreadable image (on access).
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
        sampling: str = "list",
        splits_dir: Path | None = None,
    ) -> None:
        self.root = check_root(root, ("JPEGImages", "SegmentationClassAug"), _LAYOUT, "PASCAL-5i")
        class_ids = split_class_ids(len(PASCAL_CLASSES), fold, split)
        lists = (splits_dir or packaged_splits()) / "hsnet" / "pascal"
        if split == "val":
            entries = read_hsnet_list(lists / "val" / f"fold{fold}.txt")
        else:
            entries = [
                entry
                for other in range(4)
                if other != fold
                for entry in read_hsnet_list(lists / "trn" / f"fold{other}.txt")
            ]
        foreign = sorted({c for _, c in entries} - set(class_ids))
        if foreign:
            raise DatasetError(
                f"split lists in {lists} name classes {foreign} outside the {split} classes "
                f"of fold {fold}; use the HSNet PASCAL lists"
            )
        if episodes is None:
            episodes = len(entries) if split == "train" else DEFAULT_VAL_EPISODES
        super().__init__(
            pools=group_by_class(entries),
            entries=entries,
            sampling=sampling,
            fold=fold,
            split=split,
            shots=shots,
            seed=seed,
            episodes=episodes,
            class_ids=class_ids,
            class_names=dict(enumerate(PASCAL_CLASSES, start=1)),
        )

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and label map of VOC id ``name``."""
        image = read_image(self.root / "JPEGImages" / f"{name}.jpg", self.root, _LAYOUT)
        label = read_label(self.root / "SegmentationClassAug" / f"{name}.png", self.root, _LAYOUT)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{name}: image {image.shape[:2]} and label {label.shape} differ in size "
                f"under {self.root}"
            )
        return image, label
