"""The dataset flags that ``dpnet-train``, ``dpnet-eval`` and ``dpnet-bench`` share, declared once.

Each command gives the default from its own options dataclass, e.g.
``dataset: DatasetOption = TrainOptions.dataset``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["CocoSplitOption", "DataRootOption", "DatasetOption"]

DatasetOption = Annotated[str, typer.Option(help="synthetic (embedded), pascal or coco.")]
DataRootOption = Annotated[Path | None, typer.Option(help="Dataset folder (pascal, coco).")]
CocoSplitOption = Annotated[
    str, typer.Option(help="COCO-20i fold split: interleaved (PFENet/HSNet) or consecutive.")
]
