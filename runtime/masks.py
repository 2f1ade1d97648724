"""How dpnet reads a mask *file* and names it: one rule for ``dpnet-segment``, ``--labels``
and the ``folder`` dataset, giving the arrays :class:`~dpnet_runtime.predictor.Predictor` takes.

Arrays (Python API) are always ``0 = background, 1 = object, 255 = ignore``. Files are decoded
into that by their values:

=====================================  =========================================
values in the file                     read as
=====================================  =========================================
only 0 and 1                           1 = object
only 0 and 255                         255 = object (a black-and-white mask)
0, 1 and 255                           1 = object, 255 = ignore
other grey levels (soft edges, JPEG)   object = above 127, no ignore
with ``class_id = N`` (``--class-id``)  N = object, 255 = ignore, the rest background
=====================================  =========================================

A class-label map (VOC ``SegmentationClass``, COCO class masks: small class ids, 255 on
borders) read without ``class_id`` would make the border the object; such files (a palette
PNG, or values 2..127 with no grey level between 128 and 254) are refused with a message that
asks for ``--class-id``. Colour masks are converted to grey first; 16-bit masks with values
above 255 are scaled to 8 bits first.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "MASK_SUFFIX", "decode_mask"]

IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File suffixes taken as images in query folders, globs and ``folder`` datasets (any case)."""
MASK_SUFFIX: Final = "_mask.png"
"""The mask of image ``<id>.jpg`` is ``<id>_mask.png`` beside it (``folder`` dataset, labels)."""

_SIXTEEN_BIT_SCALE: Final = 257  # 65535 / 255


def decode_mask(
    values: np.ndarray,
    source: str,
    *,
    class_id: int | None = None,
    palette: bool = False,
    require_object: bool = False,
) -> np.ndarray:
    """Turn the pixel values of a mask file into a ``0 / 1 / 255`` mask (module docstring).

    Args:
        values: ``[H, W]`` integer pixel values as stored in the file (8 or 16 bit).
        source: how messages name the file.
        class_id: read a class-label map: this class is the object (1..254).
        palette: the file is a palette image (a class-label map, never a plain mask).
        require_object: the mask must show the object (a support mask): a label map with no
            pixel of ``class_id`` is refused, naming the classes it holds.

    Returns:
        ``uint8 [H, W]``: 1 = object, 0 = background, 255 = ignore.

    Raises:
        InputError: a class id outside 1..254, a class-label map read without ``class_id``,
            or (``require_object``) a label map that lacks ``class_id``.

    >>> decode_mask(np.array([[0, 255, 255]]), "m.png").tolist()
    [[0, 1, 1]]
    >>> decode_mask(np.array([[0, 1, 255]]), "m.png").tolist()
    [[0, 1, 255]]
    >>> decode_mask(np.array([[0, 7, 255, 3]]), "m.png", class_id=7).tolist()
    [[0, 1, 255, 0]]
    """
    if class_id is not None:
        if not 0 < class_id < IGNORE_LABEL:
            raise InputError(f"class id must be in 1..{IGNORE_LABEL - 1}, got {class_id}")
        decoded = (values == class_id).astype(np.uint8)
        if require_object and not decoded.any():
            raise InputError(_missing_class(source, class_id, values))
        decoded[values == IGNORE_LABEL] = IGNORE_LABEL
        return decoded
    if values.size and values.max() > IGNORE_LABEL:
        values = np.round(values / _SIXTEEN_BIT_SCALE).clip(0, IGNORE_LABEL).astype(np.uint8)
    present = set(np.unique(values).tolist())
    if present <= {0, 1, IGNORE_LABEL}:
        if present <= {0, IGNORE_LABEL}:
            return (values == IGNORE_LABEL).astype(np.uint8)
        decoded = (values == 1).astype(np.uint8)
        decoded[values == IGNORE_LABEL] = IGNORE_LABEL
        return decoded
    small = any(1 < value < 128 for value in present)
    grey = any(127 < value < IGNORE_LABEL for value in present)
    if palette or (small and not grey):
        shown = sorted(present)[:8]
        raise InputError(
            f"{source} looks like a class-label map (values {shown}); pass --class-id N "
            "(Python: class_id=N) to read class N as the object, or save a 0/255 mask"
        )
    return (values > 127).astype(np.uint8)


def _missing_class(source: str, class_id: int, values: np.ndarray) -> str:
    """The message for a support label map without the object's class: the classes it holds."""
    classes = [value for value in np.unique(values).tolist() if 0 < value < IGNORE_LABEL]
    if not classes:
        held = "no class at all (only background 0 and ignore 255)"
        fix = "pick a support image that shows the object"
    else:
        held = f"class{'es' if len(classes) > 1 else ''} {', '.join(map(str, classes[:8]))}"
        fix = f"pass --class-id {classes[0]}" if len(classes) == 1 else "pass the object's class"
    given = f"class {class_id} (--class-id {class_id})"
    return f"{source} holds no pixel of {given}: it holds {held}; {fix}"
