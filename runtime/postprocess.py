"""Numpy post-processing: logits back to the image's size, multi-scale merge, mask files.

Design choice: the graph's 2-class logits are resized *bilinearly* to the original image
size, turned into probabilities and then arg-maxed, rather than resizing the graph's uint8
mask with nearest neighbour. Nearest neighbour on the mask draws the model grid's staircase
onto the full-size image (a 321 grid scaled to 1000 px steps every 3 pixels), costing
boundary IoU; bilinear logits give sub-pixel boundaries and are what few-shot papers
evaluate (PFENet/HSNet upsample logits to the label size). The same probabilities average
over scales for multi-scale inference (softmax averaged at the original size,
docs/design.md#data-training-and-evaluation).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
from PIL import Image

from dpnet_runtime.errors import InputError
from dpnet_runtime.fileio import atomic_write_bytes
from dpnet_runtime.outputs import MASK_FORMATS, output_format

__all__ = [
    "RED",
    "logits_to_probabilities",
    "merge_scales",
    "overlay_mask",
    "probabilities_to_mask",
    "resize_logits",
    "save_image",
]

RED: Final = (255, 0, 0)
_OVERLAY_ALPHA = 0.5


def resize_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize per-class logits bilinearly (half-pixel centres, PIL's filter).

    Args:
        logits: ``float32 [2, h, w]``.
        height: output height H.
        width: output width W.

    Returns:
        ``float32 [2, H, W]``.
    """
    if logits.shape[1:] == (height, width):
        return logits.astype(np.float32, copy=False)
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize(
                    (width, height), Image.Resampling.BILINEAR
                )
            )
            for channel in logits
        ]
    )


def logits_to_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (axis 0), numerically stable.

    Args:
        logits: ``float32 [2, H, W]``.

    Returns:
        ``float32 [2, H, W]``, summing to 1 over axis 0.
    """
    shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
    return shifted / shifted.sum(axis=0, keepdims=True)


def merge_scales(logits_per_scale: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Average the softmax of every scale's logits at the original image size.

    Args:
        logits_per_scale: one ``float32 [2, h_s, w_s]`` per inference scale.
        height: original image height H.
        width: original image width W.

    Returns:
        Probabilities ``float32 [2, H, W]`` (background, object).

    Raises:
        InputError: no scale given.
    """
    if not logits_per_scale:
        raise InputError("merge_scales needs the logits of at least one scale")
    total = np.zeros((2, height, width), dtype=np.float32)
    for logits in logits_per_scale:
        total += logits_to_probabilities(resize_logits(logits, height, width))
    return total / len(logits_per_scale)


def probabilities_to_mask(probabilities: np.ndarray) -> np.ndarray:
    """Arg-max over classes (ties go to background, as the graph's ArgMax does).

    Args:
        probabilities: ``float32 [2, H, W]``.

    Returns:
        ``uint8 [H, W]``, 1 = object.
    """
    return (probabilities[1] > probabilities[0]).astype(np.uint8)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = RED
) -> np.ndarray:
    """Tint the selected pixels of an image (red by default), for a quick visual check.

    Args:
        image: ``uint8 [H, W, 3]`` RGB.
        mask: ``[H, W]`` bool, or ``uint8`` with 1 = object (other values are not tinted).
        color: RGB tint.

    Returns:
        ``uint8 [H, W, 3]``.
    """
    blended = image.astype(np.float32)
    selected = mask == 1
    tint = np.asarray(color, dtype=np.float32)
    blended[selected] = (1 - _OVERLAY_ALPHA) * blended[selected] + _OVERLAY_ALPHA * tint
    return blended.round().astype(np.uint8)


def save_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    option: str = "--out",
    formats: Mapping[str, str] = MASK_FORMATS,
) -> None:
    """Write ``uint8 [H, W]`` or ``[H, W, 3]`` pixels atomically, in the format of the path's
    extension (:func:`dpnet_runtime.outputs.output_format`; PNG without one).

    A 0/1 mask is written as 0/255 so that it is visible in any viewer.

    Args:
        path: the destination.
        pixels: the picture or mask.
        option: the option that named ``path``, for messages.
        formats: the formats accepted (:data:`~dpnet_runtime.outputs.MASK_FORMATS`, lossless,
            for masks; :data:`~dpnet_runtime.outputs.PICTURE_FORMATS` for pictures).

    Raises:
        OptionError: an extension outside ``formats``.
    """
    image_format = output_format(path, option, formats, "PNG")
    if pixels.ndim == 2 and pixels.max(initial=0) <= 1:
        pixels = pixels * np.uint8(255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    atomic_write_bytes(path, buffer.getvalue())
