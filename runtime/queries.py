"""Query image files from the files, folders and glob patterns a user names.

Query folders and globs skip files whose names end in ``_mask`` or ``_overlay`` (masks, and
``dpnet-segment``'s own outputs) and hidden files, so a folder of the ``folder`` dataset (images
with ``NAME_mask.png`` beside them) serves as queries as it is.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from dpnet_runtime.errors import InputError
from dpnet_runtime.masks import IMAGE_SUFFIXES

__all__ = ["expand_queries", "is_query_image"]

_SKIPPED_ENDINGS: Final = ("_mask", "_overlay")


def is_query_image(path: Path) -> bool:
    """True for a visible image file whose name does not end in ``_mask`` / ``_overlay``."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not path.stem.endswith(_SKIPPED_ENDINGS)
    )


def expand_queries(arguments: Sequence[str | os.PathLike[str]]) -> tuple[Path, ...]:
    """Query image files from files, folders (their images, sorted) and glob patterns.

    Args:
        arguments: each a file, a folder, or a pattern with ``*``, ``?`` or ``[``.

    Returns:
        The files in argument order, each once.

    Raises:
        InputError: no argument, a missing file, or a folder / pattern without images.

    >>> expand_queries([])
    Traceback (most recent call last):
    ...
    dpnet_runtime.errors.InputError: no query given: pass an image, a folder or a pattern
    """
    if not arguments:
        raise InputError("no query given: pass an image, a folder or a pattern")
    found: dict[Path, None] = {}
    for argument in arguments:
        text = os.fspath(argument)
        path = Path(text)
        if glob.has_magic(text):
            files = [Path(match) for match in sorted(glob.glob(text))]
            where = f"pattern {text!r}"
        elif path.is_dir():
            files = sorted(path.iterdir())
            where = f"folder {path}"
        elif path.is_file():
            found[path] = None
            continue
        else:
            raise InputError(f"query {path} does not exist")
        images = [file for file in files if file.is_file() and is_query_image(file)]
        if not images:
            raise InputError(
                f"query {where} holds no image ({', '.join(IMAGE_SUFFIXES)}; names ending in "
                "_mask or _overlay are skipped)"
            )
        found.update(dict.fromkeys(images))
    return tuple(found)
