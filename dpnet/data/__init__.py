"""Few-shot datasets (synthetic, PASCAL-5i, COCO-20i, a folder of your own), episodes and tensors.

>>> dataset = build_dataset("synthetic", root=None, fold=0, split="val", shots=1, seed=0,
...                         episodes=4)
>>> len(dataset), dataset[0].shots
(4, 1)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dpnet.data.coco import COCO_SPLITS, CocoDataset
from dpnet.data.episode import Episode, FewShotDataset
from dpnet.data.folder import FolderDataset
from dpnet.data.pascal import PascalDataset
from dpnet.data.synthetic import SyntheticDataset
from dpnet_runtime.errors import OptionError

__all__ = [
    "COCO_SPLITS",
    "DATASETS",
    "DatasetOptions",
    "Episode",
    "FewShotDataset",
    "build_dataset",
]

_DATASET_CLASSES: dict[str, type[FewShotDataset]] = {
    "synthetic": SyntheticDataset,
    "pascal": PascalDataset,
    "coco": CocoDataset,
    "folder": FolderDataset,
}
DATASETS = tuple(_DATASET_CLASSES)

_DATASET_FLAGS: dict[str, tuple[str, ...]] = {
    "pascal": ("splits_dir", "skip_missing"),
    "coco": ("coco_split", "splits_dir", "skip_missing"),
    "folder": ("val_classes", "folds"),
}
_KEYWORD_OF = {"coco_split": "fold_split"}  # DatasetOptions field -> dataset keyword


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
    """The few-shot dataset ``name`` (``synthetic``, ``pascal``, ``coco`` or ``folder``).

    Args:
        name: dataset name.
        root: dataset folder, a ``Path`` or ``str`` (ignored by ``synthetic``; required by the
            others).
        fold: test fold 0..3.
        split: ``train`` (the other folds' classes) or ``val`` (the fold's classes).
        shots: K supports per episode.
        seed: episode seed; the same seed gives the same episodes everywhere.
        episodes: number of episodes, or None for the dataset's default.
        options: dataset-specific keywords: ``image_size`` (synthetic), ``sampling``,
            ``splits_dir`` and ``skip_missing`` (pascal), ``fold_split``, ``split_lists``,
            ``splits_dir`` and ``skip_missing`` (coco), ``val_classes`` and ``folds`` (folder);
            :meth:`DatasetOptions.keywords` gives those the CLIs expose.

    Raises:
        InputError: unknown name, fold, split, or option.
        DatasetError: missing or malformed dataset files.
    """
    if name not in DATASETS:
        raise OptionError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dataset_class = _DATASET_CLASSES[name]
    keywords: dict[str, Any] = {
        "fold": fold, "split": split, "shots": shots, "seed": seed, "episodes": episodes,
    }  # fmt: skip
    allowed = set(inspect.signature(dataset_class).parameters) - {"root", *keywords}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise OptionError(f"dataset {name!r} has no option {unknown}; it takes {sorted(allowed)}")
    if name != "synthetic":
        keywords["root"] = root
    return dataset_class(**keywords, **options)


@dataclass(frozen=True)
class DatasetOptions:
    """The dataset-specific options the CLIs share; each applies to some datasets only.

    Args:
        coco_split: COCO-20i fold split, ``interleaved`` (default) or ``consecutive`` (coco).
        splits_dir: folder of custom episode lists (pascal, coco), see those modules.
        skip_missing: leave out listed images the root lacks, instead of failing (pascal, coco).
        val_classes: class folder names that make the test split (folder).
        folds: split the sorted class folders into this many folds (folder).

    Raises:
        InputError: an unknown COCO split, ``folds`` below 2, both ``val_classes`` and
            ``folds``.
    """

    coco_split: str = COCO_SPLITS[0]
    splits_dir: Path | None = None
    skip_missing: bool = False
    val_classes: tuple[str, ...] = ()
    folds: int | None = None

    def __post_init__(self) -> None:
        if self.coco_split not in COCO_SPLITS:
            raise OptionError(
                f"coco-split must be one of {', '.join(COCO_SPLITS)}, got {self.coco_split!r}"
            )
        if self.folds is not None and self.folds < 2:
            raise OptionError(f"folds must be at least 2, got {self.folds}")
        if self.folds is not None and self.val_classes:
            raise OptionError("give --val-classes or --folds, not both")

    def keywords(self, name: str) -> dict[str, Any]:
        """The :func:`build_dataset` keywords of dataset ``name``.

        >>> DatasetOptions(coco_split="consecutive").keywords("coco")
        {'fold_split': 'consecutive'}
        >>> DatasetOptions(folds=3).keywords("folder")
        {'folds': 3}

        Raises:
            InputError: an option given (not at its default) that ``name`` does not take.
        """
        given = {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if getattr(self, field.name) != field.default
        }
        for key in given:
            takers = [dataset for dataset, keys in _DATASET_FLAGS.items() if key in keys]
            if name not in takers:
                plural = "s" if len(takers) > 1 else ""
                raise OptionError(
                    f"{key.replace('_', '-')} applies to the {' and '.join(takers)} "
                    f"dataset{plural} only, not to {name!r}"
                )
        return {_KEYWORD_OF.get(key, key): value for key, value in given.items()}
