"""Numpy pre-processing: input validation, the canonical resize, normalisation, graph feeds.

The resize here is the one evaluation resize of the project: the PyTorch eval path calls
:func:`resize_image` and :func:`resize_label_nearest` too, so every backend and PyTorch see the
same pixels. Images use PIL's bilinear filter, masks nearest neighbour (labels must not blend).

Caller images are ``uint8 [H, W, 3]`` RGB; masks are ``[H, W]`` bool, or integers/floats with
values in {0, 1} plus 255 (ignore), which counts as background for a support mask, or label maps
with a class id (the array column of :data:`dpnet_runtime.masks.MASK_RULES`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dpnet_runtime.contract import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_runtime.masks import decode_mask

__all__ = [
    "check_image",
    "check_mask",
    "decode_mask_image",
    "load_image",
    "load_mask",
    "normalize_images",
    "open_image_file",
    "prepare_query",
    "prepare_support",
    "resize_image",
    "resize_label_nearest",
    "scale_sides",
]

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size x size`` with PIL's bilinear filter.

    Args:
        image: ``uint8 [H, W, 3]``.
        size: output side.

    Returns:
        ``uint8 [size, size, 3]``.
    """
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def resize_label_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a label mask to ``size x size`` with nearest neighbour (labels never blend).

    Args:
        mask: ``[H, W]`` with values in 0..255 (bool or any integer type).
        size: output side.

    Returns:
        ``uint8 [size, size]``.
    """
    labels = np.ascontiguousarray(mask, dtype=np.uint8)
    if labels.shape == (size, size):
        return labels
    return np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))


def scale_sides(size: int, scales: Sequence[float], name: str = "multi_scale") -> tuple[int, ...]:
    """The image side of each inference scale: ``round(size * scale)``, at least 1 pixel.

    PyTorch evaluation and every runtime backend run scale ``s`` at this side, so multi-scale
    results agree across them.

    Args:
        size: the model's input side S.
        scales: inference scales of S, such as (0.7, 1.0, 1.3).
        name: the caller's name for ``scales``, quoted in the error.

    Raises:
        InputError: no scales, or one that is not a positive number.

    >>> scale_sides(321, (0.7, 1.0, 1.3))
    (225, 321, 417)
    """
    if not scales or not all(scale > 0 for scale in scales):
        raise InputError(
            f"{name} must be positive scales such as (0.7, 1.0, 1.3), got {tuple(scales)}"
        )
    return tuple(max(1, round(size * scale)) for scale in scales)


def normalize_images(
    images: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Scale to 0..1, subtract the mean, divide by the std, move channels first.

    Args:
        images: ``uint8 [..., H, W, 3]`` RGB.
        mean: per-channel mean on 0..1 pixels (RGB).
        std: per-channel std on 0..1 pixels (RGB).

    Returns:
        ``float32 [..., 3, H, W]``, contiguous.
    """
    scale = np.asarray(std, dtype=np.float32) * 255.0
    offset = np.asarray(mean, dtype=np.float32) * 255.0
    normalized = (images.astype(np.float32) - offset) / scale
    return np.ascontiguousarray(np.moveaxis(normalized, -1, -3))


def check_image(image: object, name: str) -> np.ndarray:
    """Check a caller image: a numpy ``uint8 [H, W, 3]`` RGB array.

    Raises:
        InputError: wrong type, dtype, rank or channel count (message says how to convert).
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise InputError(
            f"{name} must be [H, W, 3] RGB, got rank {image.ndim} shape {list(image.shape)} "
            "(for a grayscale image use np.stack([image] * 3, axis=-1))"
        )
    if image.shape[2] != 3:
        raise InputError(
            f"{name} must have 3 channels (RGB, channels last), got shape {list(image.shape)} "
            "(drop alpha with image[..., :3]; move channels last with image.transpose(1, 2, 0))"
        )
    if image.dtype != np.uint8:
        raise InputError(
            f"{name} must be uint8 0..255, got {image.dtype} "
            "(for 0..1 floats use (image * 255).round().astype(np.uint8))"
        )
    if min(image.shape[:2]) < 1:
        raise InputError(f"{name} is empty: shape {list(image.shape)}")
    return image


def check_mask(
    mask: object, name: str, image_shape: tuple[int, ...], *, class_id: int | None = None
) -> np.ndarray:
    """Check a support mask array and turn it into ``uint8 [H, W]`` 0/1 (ignore 255 -> 0).

    Its values are read by :func:`dpnet_runtime.masks.decode_mask`'s array rule.

    Args:
        mask: ``[H, W]`` bool, or integers/floats with values in {0, 1, 255}, or a class-label
            map with ``class_id``.
        name: how messages call it (``support mask 2``).
        image_shape: the shape of its image; ``H, W`` must match.
        class_id: ``mask`` is a class-label map: this class is the object, 255 ignore.

    Raises:
        InputError: wrong rank, size, values, or no object pixel.
    """
    if not isinstance(mask, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise InputError(f"{name} must be [H, W], got shape {list(mask.shape)}")
    if mask.shape != tuple(image_shape[:2]):
        raise InputError(
            f"{name} is {list(mask.shape)} but its image is {list(image_shape[:2])}: "
            "a mask must have its image's height and width"
        )
    labels = decode_mask(mask, name, class_id=class_id, array=True, require_object=True)
    binary = (labels == 1).astype(np.uint8)
    if not binary.any():
        # Only background and ignore: a 0/255 array (almost always meant 255 = object), or a
        # label map without the class. One message for both, since a file reaches here decoded.
        hint = (
            " (1 in an array, class N with a class id); 255 means ignore: for a 0/255 array "
            "pass (mask > 127)"
            if (labels == IGNORE_LABEL).any()
            else " (value 1): mark the object in every support mask"
        )
        raise InputError(f"{name} has no object pixel{hint}")
    return binary


def prepare_support(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: int,
    *,
    raw_input: bool,
    max_shots: int | None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    class_id: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, resize and stack K support pairs into one-episode graph inputs.

    Args:
        images: K arrays ``uint8 [H_k, W_k, 3]``.
        masks: K masks ``[H_k, W_k]`` (see :func:`check_mask`).
        size: the graph's input side.
        raw_input: the graph takes uint8 NHWC images (``--raw-input`` export).
        max_shots: the most shots the graph accepts, or ``None`` for no limit.
        mean: RGB normalisation mean (see :func:`normalize_images`).
        std: RGB normalisation std.
        class_id: the masks are class-label maps of this class (see :func:`check_mask`).

    Returns:
        ``support_images`` ``float32 [1, K, 3, S, S]`` (or ``uint8 [1, K, S, S, 3]`` raw) and
        ``support_masks`` ``float32 [1, K, S, S]`` (or ``uint8``), 1 = object.

    Raises:
        InputError: bad image or mask, K mismatch, no shots or more than ``max_shots``.
    """
    if len(images) != len(masks):
        raise InputError(
            f"got {len(images)} support images but {len(masks)} masks: give one mask per image"
        )
    if not images:
        raise InputError("no support image: give at least one image with its mask")
    if max_shots is not None and len(images) > max_shots:
        raise InputError(
            f"got {len(images)} support shots but the graph allows at most {max_shots}; "
            f"pass fewer shots or re-export with dpnet-export onnx --max-shots {len(images)}"
        )
    resized_images, resized_masks = [], []
    for shot, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
        checked = check_image(image, f"support image {shot}")
        binary = check_mask(mask, f"support mask {shot}", checked.shape, class_id=class_id)
        small = resize_label_nearest(binary, size)
        if not small.any():
            raise InputError(
                f"support mask {shot}: the object vanishes when resized to {size}x{size}; "
                "use a larger object or a support image closer to the object"
            )
        resized_images.append(resize_image(checked, size))
        resized_masks.append(small)
    stacked_images = np.stack(resized_images)[None]
    stacked_masks = np.stack(resized_masks)[None]
    if raw_input:
        return stacked_images, stacked_masks
    return normalize_images(stacked_images, mean, std), stacked_masks.astype(np.float32)


def prepare_query(
    image: np.ndarray,
    size: int,
    *,
    raw_input: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Validate and resize a query image into a one-episode graph input (normalised unless raw).

    Returns:
        ``query_image`` ``float32 [1, 3, S, S]`` (or ``uint8 [1, S, S, 3]`` raw).

    Raises:
        InputError: bad image.
    """
    resized = resize_image(check_image(image, "query image"), size)[None]
    return resized if raw_input else normalize_images(resized, mean, std)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB (any mode PIL reads; alpha dropped;
    16-bit grey scaled to 8 bits).

    Raises:
        InputError: missing or unreadable file, a floating-point image, or one over the
            pixel limit (:func:`open_image_file`).
    """
    with _open_image(path) as image:
        return _to_rgb(image, path)


def load_mask(
    path: str | os.PathLike[str], *, class_id: int | None = None, require_object: bool = False
) -> np.ndarray:
    """Read a mask file as ``uint8 [H, W]``: 1 = object, 0 = background, 255 = ignore.

    The file's values are decoded by :func:`decode_mask_image` (the file column of
    :data:`dpnet_runtime.masks.MASK_RULES`). ``require_object`` (support masks): a label map
    without a pixel of ``class_id`` is refused, naming the classes it holds.

    Raises:
        InputError: missing or unreadable file, one over the pixel limit
            (:func:`open_image_file`), a class-label map without ``class_id``, or
            (``require_object``) one that lacks that class.
    """
    with _open_image(path) as image:
        return decode_mask_image(
            image, f"mask {path}", class_id=class_id, require_object=require_object
        )


def decode_mask_image(
    image: Image.Image,
    source: str,
    *,
    class_id: int | None = None,
    require_object: bool = False,
) -> np.ndarray:
    """Decode an opened mask image by the file rule of :func:`dpnet_runtime.masks.decode_mask`.

    Colour and grey-alpha images are read as grey; palette images are class-label maps (their
    indices are the values); 16-bit images are scaled to 8 bits.

    Args:
        image: a loaded PIL image (a file, or an HTTP upload).
        source: how messages name it (``mask cat.png``, ``support mask 1``).
        class_id: read a class-label map: this class is the object (1..254).
        require_object: a support mask: a label map without a pixel of ``class_id`` is refused.

    Returns:
        ``uint8 [H, W]``: 1 = object, 0 = background, 255 = ignore.

    Raises:
        InputError: a class-label map without ``class_id``, a bad class id, or
            (``require_object``) a label map that lacks that class.
    """
    palette = image.mode == "P"
    values = np.asarray(
        image if image.mode in ("1", "L", "P", *_SIXTEEN_BIT_MODES) else image.convert("L")
    )
    if values.ndim != 2:
        raise InputError(f"{source} has shape {list(values.shape)}; expected a one-channel image")
    return decode_mask(
        values, source, class_id=class_id, palette=palette, require_object=require_object
    )


def _to_rgb(image: Image.Image, path: str | os.PathLike[str]) -> np.ndarray:
    # PIL's own conversion clips 16-bit grey at 255 (a white picture): scale it instead.
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64)
        if grey.size and grey.max() > 255:
            grey = np.round(grey / 257)
        return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if image.mode == "F":
        raise InputError(f"image {path} holds 32-bit floats; save it as an 8- or 16-bit image")
    return np.asarray(image.convert("RGB"))


def open_image_file(
    path: str | os.PathLike[str], error: type[DpnetError] = InputError
) -> Image.Image:
    """Open an image file (header only, lazily) if its size is within PIL's pixel limit.

    PIL refuses (``DecompressionBombError``) or warns about images of more than
    ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (89,478,485 by default, about 9459 x 9459): so large
    an image is a mistake or a decompression bomb, not a photo to segment, and decoding it
    would take gigabytes. Every image and mask reader of dpnet opens files here and refuses
    all of them in one line; a caller who raises PIL's limit raises dpnet's with it.

    Args:
        path: the image file.
        error: the error to raise: ``InputError`` for caller files, ``DatasetError`` for a
            dataset's.

    Raises:
        error: the image has more pixels than the limit.
        OSError, UnidentifiedImageError: as ``PIL.Image.open``.
    """
    with warnings.catch_warnings():
        # PIL warns between 1x and 2x its limit and raises above; both mean the same here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            limit = Image.MAX_IMAGE_PIXELS or 0
            raise error(
                f"image {path} is too large: dpnet reads images of at most {limit:,} pixels "
                f"(about {math.isqrt(limit)} x {math.isqrt(limit)}, PIL's "
                "Image.MAX_IMAGE_PIXELS); downscale it first"
            ) from exc


def _open_image(path: str | os.PathLike[str]) -> Image.Image:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"image file {file} does not exist")
    try:
        image = open_image_file(file)
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {file}: {exc}") from exc
    return image
