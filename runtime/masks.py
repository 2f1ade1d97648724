"""What a mask means: the one rule of every dpnet interface, and its table.

:func:`decode_mask` turns the values of a mask into ``0 = background, 1 = object, 255 = ignore``
(the arrays the model's pre-processing takes); every interface calls it:

- a mask *file* (``dpnet-segment --support`` / ``--labels``, the ``folder`` dataset,
  :func:`~dpnet_runtime.preprocess.load_mask`, a mask uploaded to ``dpnet-serve``) is read by
  its values, the way image files store masks (0/255 black and white, soft JPEG edges);
- a mask *array* (:class:`~dpnet_runtime.predictor.Predictor`, ``dpnet_serve.Client``) is taken
  as it stands: ``0 / 1 / 255`` or bool, never guessed. 255 in an array is the ignore label of
  every segmentation data pipeline, so a 0/255 array holds no object; guessing "255 = object"
  there would silently turn an ignore border into the object.

A file and the array :func:`~dpnet_runtime.preprocess.load_mask` reads from it encode the same
support set; an array that the rule refuses gets a message naming the fix (``mask > 127``).
A class-label map (VOC ``SegmentationClass``, COCO class masks: class ids, 255 on borders) needs
its class id (``--class-id N``, ``class_id=N`` in Python and over HTTP), the same in a file and
in an array; read without it, it would make the border the object, so it is refused.

The table, :data:`MASK_RULES`, is what the docs (``docs/segment.md``), ``dpnet-segment --help``
and the HTTP API's register endpoint show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_RULES",
    "MASK_SUFFIX",
    "MaskRule",
    "decode_mask",
    "mask_rules_help",
    "mask_rules_markdown",
]

IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File suffixes taken as images in query folders, globs and ``folder`` datasets (any case)."""
MASK_SUFFIX: Final = "_mask.png"
"""The mask of image ``<id>.jpg`` is ``<id>_mask.png`` beside it (``folder`` dataset, labels)."""

_SIXTEEN_BIT_SCALE: Final = 257  # 65535 / 255


@dataclass(frozen=True)
class MaskRule:
    """One row of the mask table.

    Attributes:
        values: the values a mask holds.
        in_file: what they mean in a mask file or upload.
        in_array: what they mean in a numpy array.
    """

    values: str
    in_file: str
    in_array: str


_LABEL_MAP_REFUSED: Final = "refused: give the class id"
_NO_FILE: Final = "(no such file)"
MASK_RULES: Final = (
    MaskRule("0 and 1", "1 = object", "1 = object"),
    MaskRule("0, 1 and 255", "1 = object, 255 = ignore", "1 = object, 255 = ignore"),
    MaskRule(
        "0 and 255",
        "255 = object (a black-and-white mask)",
        "255 = ignore, so no object: refused, pass `mask > 127`",
    ),
    MaskRule(
        "other grey levels (soft edges, JPEG)",
        "object above 127",
        "refused: pass `mask > 127`",
    ),
    MaskRule("bool", _NO_FILE, "True = object"),
    MaskRule(
        "a label map with class id N",
        "N = object, 255 = ignore, the rest background",
        "N = object, 255 = ignore, the rest background",
    ),
    MaskRule(
        "a label map without class id (a palette PNG, or ids 2..127 and no grey level)",
        _LABEL_MAP_REFUSED,
        _LABEL_MAP_REFUSED,
    ),
)
"""The mask table: what :func:`decode_mask` does, row by row."""

_FILE_READERS: Final = "a file: `dpnet-segment`, HTTP uploads, `load_mask`, `folder` data"
_ARRAY_READERS: Final = "an array: `Predictor`, `dpnet_serve.Client`"
_NOTES: Final = (
    "The class id is `--class-id N` (dpnet-segment), `class_id=N` (`Predictor.encode_support`, "
    "`Client.register`, `load_mask`) or the form field `class_id` (HTTP `POST /classes/{name}` "
    "and `/episode`), 1..254. Colour files are read as grey, 16-bit files scaled to 8 bits. "
    "Ignore counts as background in a support mask, and every support mask needs an object "
    "pixel. The same mask gives the same support set, or the same error, on every interface."
)


def mask_rules_markdown() -> str:
    """The mask table as Markdown (``docs/segment.md``, the HTTP API's OpenAPI page)."""
    lines = [
        f"| mask values | in {_FILE_READERS} | in {_ARRAY_READERS} |",
        "|---|---|---|",
        *(f"| {rule.values} | {rule.in_file} | {rule.in_array} |" for rule in MASK_RULES),
    ]
    return "\n".join(lines) + "\n\n" + _NOTES + "\n"


def mask_rules_help() -> str:
    """The mask table as ``--help`` text: the file column, then how arrays differ."""
    files = [rule for rule in MASK_RULES if rule.in_file != _NO_FILE]
    differ = "; ".join(rule.values for rule in files if rule.in_array != rule.in_file)
    return "\n".join(f"- {rule.values}: {rule.in_file}" for rule in files) + (
        "\n\nPython arrays (Predictor, dpnet_serve.Client) hold 0 / 1 / 255 (ignore) or bool, "
        f"so these are refused there: {differ} (pass mask > 127). dpnet-serve reads uploaded "
        "mask files by this table (class id: form field class_id)."
    )


def decode_mask(
    values: np.ndarray,
    source: str,
    *,
    class_id: int | None = None,
    palette: bool = False,
    array: bool = False,
    require_object: bool = False,
) -> np.ndarray:
    """Turn the values of a mask into a ``0 / 1 / 255`` mask (the rows of :data:`MASK_RULES`).

    Args:
        values: ``[H, W]`` values: a file's pixels (8 or 16 bit), or a caller's array (bool,
            integers or floats).
        source: how messages name the mask (``support mask 1``, ``mask cat.png``).
        class_id: read a class-label map: this class is the object (1..254).
        palette: the file is a palette image (a class-label map, never a plain mask).
        array: ``values`` is a caller's array (the array column), not a file's pixels.
        require_object: the mask must show the object (a support mask): a label map with no
            pixel of ``class_id`` is refused, naming the classes it holds.

    Returns:
        ``uint8 [H, W]``: 1 = object, 0 = background, 255 = ignore. It may hold no object: a
        support mask is checked for one by :func:`~dpnet_runtime.preprocess.check_mask`.

    Raises:
        InputError: a class id outside 1..254, a class-label map read without ``class_id``,
            an array outside ``0 / 1 / 255``, or (``require_object``) a label map that lacks
            ``class_id``.

    >>> decode_mask(np.array([[0, 255, 255]]), "m.png").tolist()
    [[0, 1, 1]]
    >>> decode_mask(np.array([[0, 255, 255]]), "mask 1", array=True).tolist()
    [[0, 255, 255]]
    >>> decode_mask(np.array([[0, 1, 255]]), "m.png").tolist()
    [[0, 1, 255]]
    >>> decode_mask(np.array([[0, 7, 255, 3]]), "m.png", class_id=7).tolist()
    [[0, 1, 255, 0]]
    """
    if array and values.dtype == np.bool_:
        return values.astype(np.uint8)
    if values.dtype.kind not in "iuf":
        raise InputError(f"{source} has dtype {values.dtype}; expected bool, integers or floats")
    if class_id is not None:
        if not 0 < class_id < IGNORE_LABEL:
            raise InputError(f"class id must be in 1..{IGNORE_LABEL - 1}, got {class_id}")
        if require_object and not (values == class_id).any():
            raise InputError(_missing_class(source, class_id, values))
        return _with_ignore(values == class_id, values)
    if not array and values.size and values.max() > IGNORE_LABEL:
        values = np.round(values / _SIXTEEN_BIT_SCALE).clip(0, IGNORE_LABEL).astype(np.uint8)
    present = set(np.unique(values).tolist())
    if present <= {0, IGNORE_LABEL} and not array:
        return (values == IGNORE_LABEL).astype(np.uint8)
    if present <= {0, 1, IGNORE_LABEL}:
        return _with_ignore(values == 1, values)
    shown = sorted(present)[:8]
    small = any(1 < value < 128 for value in present)
    grey = any(127 < value < IGNORE_LABEL for value in present)
    if palette or (small and not grey):
        raise InputError(
            f"{source} looks like a class-label map (values {shown}); give the class to read "
            "as the object (dpnet-segment --class-id N, Python or HTTP class_id=N), or use a "
            "0/1 mask"
        )
    if array:
        raise InputError(
            f"{source} has values {shown}; expected 0 (background), 1 (object) or "
            f"{IGNORE_LABEL} (ignore), or bool: for 0/255 and grey masks pass (mask > 127)"
        )
    return (values > 127).astype(np.uint8)


def _with_ignore(objects: np.ndarray, values: np.ndarray) -> np.ndarray:
    decoded = objects.astype(np.uint8)
    decoded[values == IGNORE_LABEL] = IGNORE_LABEL
    return decoded


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
