"""Write a ``folder`` dataset of real image files: synthetic scenes, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dpnet.data.episode import binary_mask
from dpnet.data.synthetic import class_parts, render_scene

# Synthetic classes used as the folder's classes (two shapes and textures of fold 0 and 1).
SOURCE_CLASSES = (1, 2, 6, 7)


def class_name(source_class: int) -> str:
    """Folder name of a synthetic class, e.g. ``disk-stripes``."""
    return "-".join(class_parts(source_class))


def write_folder_dataset(
    root: Path,
    *,
    classes: tuple[int, ...] = SOURCE_CLASSES,
    images: int = 3,
    size: int = 64,
    seed: int = 0,
    ignore_as_1_255: bool = False,
) -> dict[str, list[Path]]:
    """Write ``root/<class>/<id>.png`` and ``<id>_mask.png`` for synthetic ``classes``.

    Masks are 0/255 (object 255), or 0/1/255 (object 1, ignore 255) with ``ignore_as_1_255``.
    Returns the image files per class name.
    """
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {}
    for source in classes:
        folder = root / class_name(source)
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images):
            image, label = render_scene(source, (), rng, size=size)
            mask = binary_mask(label, source)
            if not ignore_as_1_255:
                mask = np.where(mask == 1, 255, 0).astype(np.uint8)
            path = folder / f"img{index}.png"
            Image.fromarray(image).save(path)
            Image.fromarray(mask).save(folder / f"img{index}_mask.png")
            written.setdefault(folder.name, []).append(path)
    return written
