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

Custom lists (``splits_dir``, ``--splits-dir``): a folder holding ``val/fold{i}.txt`` and
``trn/fold{i}.txt`` in that format, or a copy of the packaged ``splits`` folder. Every image a
list names must exist under the root: otherwise the error says how many are missing and which
first; with ``skip_missing`` (``--skip-missing``) those images, and the classes left with
fewer than K + 1 images, are left out and a warning says how many list entries remain (a
subset of VOC is evaluated on what it holds).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path

import numpy as np

from dpnet.data.episode import ListEntry, PooledDataset, group_by_class, split_class_ids
from dpnet_runtime.errors import DatasetError
from dpnet_runtime.preprocess import open_image_file

__all__ = [
    "PASCAL_CLASSES",
    "PascalDataset",
    "find_missing",
    "list_folder",
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
_LOG = logging.getLogger(__name__)


def packaged_splits() -> Path:
    """Folder of the split lists shipped inside the package."""
    return Path(str(resources.files("dpnet.data") / "splits"))


def list_folder(splits_dir: Path | str | None, dataset: str) -> Path:
    """The folder holding ``{trn,val}/fold*`` lists of ``dataset`` (``pascal``, ``coco``).

    ``splits_dir/hsnet/<dataset>`` when that exists (a copy of the packaged folder), else
    ``splits_dir`` itself; ``None`` is the packaged folder.
    """
    base = packaged_splits() if splits_dir is None else Path(splits_dir)
    nested = base / "hsnet" / dataset
    return nested if nested.is_dir() else base


def find_missing(
    names: Iterable[str],
    files_of: Callable[[str], tuple[Path, ...]],
    *,
    skip_missing: bool,
    source: str,
    root: Path,
) -> frozenset[str]:
    """The names among ``names`` whose files are not all under ``root``.

    Args:
        names: image names a list (or annotation file) holds.
        files_of: the files one name needs.
        skip_missing: return the missing names (and log a warning) instead of failing.
        source: what named the images, for messages (``val/fold0.txt``).
        root: the dataset root, for messages.

    Raises:
        DatasetError: some are missing and ``skip_missing`` is off: how many, and which first.
    """
    unique = list(dict.fromkeys(names))
    missing = {}
    for name in unique:
        absent = [path for path in files_of(name) if not path.is_file()]
        if absent:
            missing[name] = absent[0]
    if missing and not skip_missing:
        first = next(iter(missing.values()))
        raise DatasetError(
            f"{source} names {len(missing)} of {len(unique)} images that {root} lacks (first: "
            f"{first}); pass --skip-missing to use the {len(unique) - len(missing)} that exist, "
            "or --splits-dir with lists of your subset"
        )
    if missing:
        _LOG.warning(
            "--skip-missing: %d of %d images named by %s are missing under %s (first: %s)",
            len(missing), len(unique), source, root, next(iter(missing.values())),
        )  # fmt: skip
    return frozenset(missing)


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
        splits_dir: folder holding ``{trn,val}/fold*.txt`` (or ``hsnet/pascal/...``);
            ``Path`` or ``str``; default: the packaged lists.
        skip_missing: leave out listed images the root lacks instead of failing.

    Raises:
        DatasetError: missing root, folder or list; listed images missing under the root
            (without ``skip_missing``); unreadable image (on access).
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
        splits_dir: Path | str | None = None,
        skip_missing: bool = False,
    ) -> None:
        self.root = check_root(root, ("JPEGImages", "SegmentationClassAug"), _LAYOUT, "PASCAL-5i")
        class_ids = split_class_ids(len(PASCAL_CLASSES), fold, split)
        lists = list_folder(splits_dir, "pascal")
        if split == "val":
            files = [lists / "val" / f"fold{fold}.txt"]
        else:
            files = [lists / "trn" / f"fold{other}.txt" for other in range(4) if other != fold]
        entries = [entry for file in files for entry in read_hsnet_list(file)]
        foreign = sorted({c for _, c in entries} - set(class_ids))
        if foreign:
            raise DatasetError(
                f"split lists in {lists} name classes {foreign} outside the {split} classes "
                f"of fold {fold}; use the HSNet PASCAL lists"
            )
        missing = find_missing(
            (name for name, _ in entries),
            self._files,
            skip_missing=skip_missing,
            source=", ".join(str(file) for file in files),
            root=self.root,
        )
        if missing:
            entries = _without_small_classes(
                [entry for entry in entries if entry[0] not in missing], shots
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

    def _files(self, name: str) -> tuple[Path, Path]:
        """Image and label file of VOC id ``name``."""
        return (
            self.root / "JPEGImages" / f"{name}.jpg",
            self.root / "SegmentationClassAug" / f"{name}.png",
        )

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and label map of VOC id ``name``."""
        image_file, label_file = self._files(name)
        image = read_image(image_file, self.root, _LAYOUT)
        label = read_label(label_file, self.root, _LAYOUT)
        if image.shape[:2] != label.shape:
            raise DatasetError(
                f"{name}: image {image.shape[:2]} and label {label.shape} differ in size "
                f"under {self.root}"
            )
        return image, label


def _without_small_classes(entries: list[ListEntry], shots: int) -> list[ListEntry]:
    """Entries of classes that still have K + 1 images; a warning says how many remain."""
    pools = group_by_class(entries)
    kept = [entry for entry in entries if len(pools[entry[1]]) > shots]
    small = sorted(c for c, names in pools.items() if len(names) <= shots)
    if not kept:
        raise DatasetError(
            f"after --skip-missing no class has {shots + 1} images; nothing left to evaluate"
        )
    _LOG.warning(
        "--skip-missing: %d list entries remain (query episodes cycle through them)%s",
        len(kept),
        f"; classes {small} have fewer than {shots + 1} images and are left out" if small else "",
    )
    return kept
