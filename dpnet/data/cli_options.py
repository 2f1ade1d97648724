"""The dataset flags that ``dpnet-train``, ``dpnet-eval`` and ``dpnet-bench`` share, declared once.

Each command gives the default from its own options dataclass, e.g.
``dataset: DatasetOption = TrainOptions.dataset``, and builds the dataset-specific ones into a
:class:`~dpnet.data.DatasetOptions` with :func:`dataset_flags`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dpnet.data import DatasetOptions

__all__ = [
    "CocoSplitOption",
    "DataRootOption",
    "DatasetOption",
    "FoldsOption",
    "SkipMissingOption",
    "SplitsDirOption",
    "ValClassesOption",
    "dataset_flags",
]

DatasetOption = Annotated[
    str, typer.Option(help="synthetic (embedded), pascal, coco or folder (your own images).")
]
DataRootOption = Annotated[Path | None, typer.Option(help="Dataset folder (pascal, coco, folder).")]
CocoSplitOption = Annotated[
    str, typer.Option(help="COCO-20i fold split: interleaved (PFENet/HSNet) or consecutive.")
]
SplitsDirOption = Annotated[
    Path | None,
    typer.Option(help="pascal/coco: folder of episode lists val/foldN.txt, trn/foldN.txt."),
]
SkipMissingOption = Annotated[
    bool,
    typer.Option(help="pascal/coco: leave out listed images the root lacks (a subset)."),
]
ValClassesOption = Annotated[
    str | None,
    typer.Option(help="folder: test class folders, comma-separated (the rest train)."),
]
FoldsOption = Annotated[
    int | None,
    typer.Option(help="folder: cut the sorted classes into N folds; --fold picks the test one."),
]


def dataset_flags(
    *,
    coco_split: str,
    splits_dir: Path | None,
    skip_missing: bool,
    val_classes: str | None,
    folds: int | None,
) -> DatasetOptions:
    """The :class:`~dpnet.data.DatasetOptions` of the flags above (``a,b`` -> ``("a", "b")``).

    >>> dataset_flags(coco_split="interleaved", splits_dir=None, skip_missing=False,
    ...               val_classes="cat, dog", folds=None).val_classes
    ('cat', 'dog')
    """
    names = tuple(name.strip() for name in (val_classes or "").split(",") if name.strip())
    return DatasetOptions(coco_split, splits_dir, skip_missing, names, folds)
