"""A few-shot dataset from a folder of your own images and masks, one sub-folder per class.

Layout::

    ROOT/<class name>/<id>.jpg         image (any of .jpg .jpeg .png .bmp .gif .tif .tiff .webp)
    ROOT/<class name>/<id>_mask.png    its mask, the same size

Masks follow the mask-file rule of :mod:`dpnet_runtime.masks`: 0/1 (1 = object), 0/255
(255 = object) or 0/1/255 (255 = ignore). Images may differ in size and be grey, RGBA or
16-bit (read by :func:`dpnet_runtime.preprocess.load_image`). Hidden files and files directly
in ROOT are ignored; anything else in a class folder that is not an image or its mask is an
error, as are an empty class, an image without a mask, a mask without an image, a mask of
another size and an unreadable image: each names the file.

Classes are the sub-folders in sorted order, numbered from 1. The class split:

* ``val_classes=("cat", "dog")``: those are the test (``val``) classes, the rest train;
* ``folds=N``: the sorted classes are cut into N consecutive folds (sizes differing by at most
  one), fold i tests fold i's classes and trains on the others, as PASCAL-5i does;
* neither: every class is in both splits (fine-tuning to your domain: new classes need no
  training, a few-shot model segments them from their supports).

Episodes are drawn by seed (:func:`~dpnet.data.episode.plan_seeded_episode`): the class
uniformly, then the query and K other images of it; the same seed gives the same episodes.
Every class of the split needs K + 1 images: a smaller one is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import UnidentifiedImageError

from dpnet.data.episode import PooledDataset, check_split
from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import DatasetError, InputError, OptionError
from dpnet_runtime.masks import IMAGE_SUFFIXES, MASK_SUFFIX
from dpnet_runtime.preprocess import load_image, load_mask, open_image_file

__all__ = ["FolderDataset", "folder_fold_classes"]

DEFAULT_TRAIN_EPISODES: Final = 10_000
DEFAULT_VAL_EPISODES: Final = 1000
_LAYOUT: Final = "expected ROOT/<class>/<id>.jpg|png with ROOT/<class>/<id>_mask.png"


@dataclass(frozen=True)
class _Item:
    image: Path
    mask: Path
    class_id: int


def folder_fold_classes(num_classes: int, fold: int, folds: int) -> tuple[int, ...]:
    """1-based classes of ``fold`` when ``num_classes`` sorted classes make ``folds`` folds.

    >>> [folder_fold_classes(7, fold, 3) for fold in range(3)]
    [(1, 2), (3, 4, 5), (6, 7)]

    Raises:
        InputError: fewer classes than folds, or a fold outside 0..folds-1.
    """
    if num_classes < folds:
        raise OptionError(f"{num_classes} classes cannot make {folds} folds; use fewer --folds")
    if not 0 <= fold < folds:
        raise OptionError(f"fold must be in 0..{folds - 1} with --folds {folds}, got {fold}")
    first, last = round(fold * num_classes / folds), round((fold + 1) * num_classes / folds)
    return tuple(range(first + 1, last + 1))


class FolderDataset(PooledDataset):
    """Few-shot episodes of a folder of class sub-folders (layout in the module docstring).

    Args:
        root: the dataset folder (``Path`` or ``str``).
        fold: the test fold (0 without ``folds``).
        split: ``train`` or ``val``.
        shots: K; seed: the episode seed.
        episodes: number of episodes; None: 10000 for ``train``, 1000 for ``val``.
        val_classes: names of the test classes.
        folds: number of folds of the sorted classes.

    Raises:
        DatasetError: a missing root, a bad class folder or file, a class with fewer than K + 1
            images (each message names the path).
        InputError: unknown validation classes, both ``val_classes`` and ``folds``, a fold
            without ``folds``, or a split without classes.
    """

    def __init__(
        self,
        root: Path | str | None,
        *,
        fold: int,
        split: str,
        shots: int,
        seed: int,
        episodes: int | None = None,
        val_classes: Sequence[str] = (),
        folds: int | None = None,
    ) -> None:
        check_split(split)
        self.root = _check_root(root)
        names = sorted(
            path.name for path in self.root.iterdir() if path.is_dir() and _visible(path)
        )
        if not names:
            raise DatasetError(f"folder dataset {self.root} has no class folder; {_LAYOUT}")
        if len(names) >= IGNORE_LABEL:
            raise DatasetError(f"{self.root} has {len(names)} class folders; at most 254")
        class_ids = _split_classes(names, fold, split, tuple(val_classes), folds)
        self._items: dict[str, _Item] = {}
        pools = {}
        for class_id in class_ids:
            items = _scan_class(self.root / names[class_id - 1], class_id)
            if len(items) < shots + 1:
                raise DatasetError(
                    f"class {names[class_id - 1]!r} ({self.root / names[class_id - 1]}) has "
                    f"{len(items)} images, {shots} shots need {shots + 1}; add images or use "
                    "fewer --shots"
                )
            self._items.update(items)
            pools[class_id] = tuple(items)
        super().__init__(
            pools=pools,
            entries=None,
            sampling="seed",
            fold=fold,
            split=split,
            shots=shots,
            seed=seed,
            episodes=_default_episodes(split) if episodes is None else episodes,
            class_ids=class_ids,
            class_names=dict(enumerate(names, start=1)),
        )

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Image and class-label map of ``<class>/<id>`` (the class id where the mask says
        object, 255 where it says ignore)."""
        item = self._items[name]
        try:
            image = load_image(item.image)
            mask = load_mask(item.mask)
        except InputError as exc:
            raise DatasetError(f"{exc} (folder dataset {self.root})") from exc
        if mask.shape != image.shape[:2]:
            raise DatasetError(_size_message(item.mask, mask.shape, image.shape[:2]))
        label = np.where(mask == 1, item.class_id, mask).astype(np.uint8)
        return image, label


def _default_episodes(split: str) -> int:
    return DEFAULT_TRAIN_EPISODES if split == "train" else DEFAULT_VAL_EPISODES


def _check_root(root: Path | str | None) -> Path:
    if root is None:
        raise DatasetError(f"the folder dataset needs --data-root; {_LAYOUT}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder dataset root {root} is not a folder; {_LAYOUT}")
    return root


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _split_classes(
    names: list[str], fold: int, split: str, val_classes: tuple[str, ...], folds: int | None
) -> tuple[int, ...]:
    """1-based classes of ``split`` (module docstring)."""
    all_ids = tuple(range(1, len(names) + 1))
    if val_classes and folds is not None:
        raise OptionError("give --val-classes or --folds, not both")
    if folds is None and fold != 0:
        raise OptionError(f"fold {fold} needs --folds N (the folder dataset has one fold without)")
    if folds is not None:
        test = folder_fold_classes(len(names), fold, folds)
    elif val_classes:
        unknown = sorted(set(val_classes) - set(names))
        if unknown:
            raise OptionError(f"val classes {unknown} are not class folders; the classes: {names}")
        test = tuple(names.index(name) + 1 for name in sorted(set(val_classes)))
    else:
        return all_ids
    chosen = test if split == "val" else tuple(c for c in all_ids if c not in test)
    if not chosen:
        raise InputError(f"the {split} split has no class: leave some classes out of the test ones")
    return chosen


def _scan_class(folder: Path, class_id: int) -> dict[str, _Item]:
    """``<class>/<id>`` -> image, mask and class of every image of one class folder."""
    files = sorted(path for path in folder.iterdir() if _visible(path))
    masks = {
        path.name[: -len(MASK_SUFFIX)]: path for path in files if path.name.endswith(MASK_SUFFIX)
    }
    items: dict[str, _Item] = {}
    for path in files:
        if path.name.endswith(MASK_SUFFIX):
            continue
        if (
            path.is_dir()
            or path.suffix.lower() not in IMAGE_SUFFIXES
            or path.stem.endswith("_mask")
        ):
            raise DatasetError(
                f"{path} is not an image or an <id>{MASK_SUFFIX} mask; move it out of {folder}"
            )
        name = f"{folder.name}/{path.stem}"
        if name in items:
            raise DatasetError(
                f"{items[name].image} and {path} share the id {path.stem!r}; rename one"
            )
        if path.stem not in masks:
            raise DatasetError(
                f"image {path} has no mask: expected {folder / (path.stem + MASK_SUFFIX)}"
            )
        _check_sizes(path, masks[path.stem])
        items[name] = _Item(path, masks[path.stem], class_id)
    if not items:
        raise DatasetError(f"class folder {folder} holds no image; {_LAYOUT}")
    orphans = sorted(set(masks) - {Path(name).name for name in items})
    if orphans:
        raise DatasetError(f"mask {masks[orphans[0]]} has no image <id>.jpg or .png beside it")
    return items


def _check_sizes(image: Path, mask: Path) -> None:
    """Read both headers (not the pixels): unreadable files and size mismatches fail now."""
    sizes = []
    for path in (image, mask):
        try:
            with open_image_file(path, DatasetError) as opened:
                sizes.append(opened.size)
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(
                f"cannot read {path} as an image ({exc}); replace or remove it"
            ) from exc
    if sizes[0] != sizes[1]:
        (width, height), (image_width, image_height) = sizes[1], sizes[0]
        raise DatasetError(_size_message(mask, (height, width), (image_height, image_width)))


def _size_message(mask: Path, mask_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str:
    return (
        f"mask {mask} is {mask_shape[1]} x {mask_shape[0]} but its image is "
        f"{image_shape[1]} x {image_shape[0]}; a mask has its image's size"
    )
