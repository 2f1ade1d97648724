"""Few-shot datasets (synthetic, PASCAL-5i, COCO-20i), episodes and their tensors.

>>> dataset = build_dataset("synthetic", root=None, fold=0, split="val", shots=1, seed=0,
...                         episodes=4)
>>> len(dataset), dataset[0].shots
(4, 1)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from dpnet.data.coco import COCO_SPLITS, CocoDataset
from dpnet.data.episode import Episode, FewShotDataset
from dpnet.data.pascal import PascalDataset
from dpnet.data.synthetic import SyntheticDataset
from dpnet_runtime.errors import InputError

__all__ = [
    "COCO_SPLITS",
    "DATASETS",
    "Episode",
    "FewShotDataset",
    "build_dataset",
    "dataset_options",
]

_DATASET_CLASSES: dict[str, type[FewShotDataset]] = {
    "synthetic": SyntheticDataset,
    "pascal": PascalDataset,
    "coco": CocoDataset,
}
DATASETS = tuple(_DATASET_CLASSES)


def build_dataset(
    name: str,
    *,
    root: Path | None,
    fold: int,
    split: str,
    shots: int,
    seed: int,
    episodes: int | None,
    **options: Any,
) -> FewShotDataset:
    """The few-shot dataset ``name`` (``synthetic``, ``pascal`` or ``coco``).

    Args:
        name: dataset name.
        root: dataset folder (ignored by ``synthetic``; required by the others).
        fold: test fold 0..3.
        split: ``train`` (the other folds' classes) or ``val`` (the fold's classes).
        shots: K supports per episode.
        seed: episode seed; the same seed gives the same episodes everywhere.
        episodes: number of episodes, or None for the dataset's default.
        options: dataset-specific keywords: ``image_size`` (synthetic), ``sampling`` and
            ``splits_dir`` (pascal), ``fold_split``, ``split_lists`` and ``splits_dir`` (coco).

    Raises:
        InputError: unknown name, fold, split, or option.
        DatasetError: missing or malformed dataset files.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dataset_class = _DATASET_CLASSES[name]
    keywords: dict[str, Any] = {
        "fold": fold, "split": split, "shots": shots, "seed": seed, "episodes": episodes,
    }  # fmt: skip
    allowed = set(inspect.signature(dataset_class).parameters) - {"root", *keywords}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(f"dataset {name!r} has no option {unknown}; it takes {sorted(allowed)}")
    if name != "synthetic":
        keywords["root"] = root
    return dataset_class(**keywords, **options)


def dataset_options(name: str, *, coco_split: str = "interleaved") -> dict[str, Any]:
    """The keywords of :func:`build_dataset` that the CLIs expose, for dataset ``name``.

    >>> dataset_options("coco", coco_split="consecutive")
    {'fold_split': 'consecutive'}
    >>> dataset_options("pascal")
    {}

    Raises:
        InputError: an unknown COCO split, or a non-default one for another dataset.
    """
    if coco_split not in COCO_SPLITS:
        raise InputError(f"coco-split must be one of {', '.join(COCO_SPLITS)}, got {coco_split!r}")
    if name == "coco":
        return {"fold_split": coco_split}
    if coco_split != COCO_SPLITS[0]:
        raise InputError(f"coco-split applies to the coco dataset only, not to {name!r}")
    return {}
