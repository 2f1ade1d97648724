"""Contact sheets: captioned panels of supports, queries, predictions and ground truth (PIL only).

A sheet explains itself: title lines (what was segmented, with which model, the score), a
colour legend, one row of support panels (each image with its mask tinted green, captioned with
its file name), then one row per query: the query, its prediction tinted red (captioned with its
IoU, or "no object" when neither the ground truth nor the prediction holds the object) and the
ground truth (object green, ignore grey). Every panel is scaled to fit a square cell
(bottom-aligned) and has a caption right below it.
``dpnet-segment --sheet`` and ``dpnet-demo`` draw their pictures with it.

>>> import numpy as np
>>> image, mask = np.zeros((40, 60, 3), np.uint8), np.eye(40, 60, dtype=np.uint8)
>>> rows = [support_panels([image], [mask]), query_panels(image, mask, "query", mask, 100.0)]
>>> render_sheet(rows, ["demo"]).shape[2]
3
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dpnet_runtime.contract import IGNORE_LABEL
from dpnet_runtime.postprocess import RED, overlay_mask

__all__ = [
    "CELL",
    "LEGEND",
    "NO_OBJECT",
    "Panel",
    "fit_image",
    "query_panels",
    "render_sheet",
    "support_panels",
]

CELL: Final = 192
"""Side of a panel's square cell in pixels."""
GREEN: Final = (0, 200, 0)
GREY: Final = (128, 128, 128)
LEGEND: Final = (
    (GREEN, "annotated object"),
    (RED, "predicted object"),
    (GREY, "ignored"),
)
"""The colour legend drawn under the title: (tint, what it marks)."""
NO_OBJECT: Final = "no object"
"""Caption of a prediction that is empty on an image without the object (IoU undefined)."""
_GAP: Final = 6
_FONT_SIZE: Final = 13
_CAPTION: Final = 20  # caption strip height
_SWATCH: Final = 12
_BACKGROUND: Final = (255, 255, 255)
_INK: Final = (0, 0, 0)


@dataclass(frozen=True)
class Panel:
    """A picture and its caption.

    Attributes:
        image: ``uint8 [h, w, 3]`` RGB, at most :data:`CELL` on each side.
        caption: one line drawn under the picture.
    """

    image: np.ndarray
    caption: str


def fit_image(image: np.ndarray, side: int = CELL) -> np.ndarray:
    """Scale ``uint8 [H, W, 3]`` to fit a ``side x side`` square, keeping the aspect ratio."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _annotation(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Object (1) tinted green, ignore (255) grey."""
    return overlay_mask(overlay_mask(image, mask, GREEN), mask == IGNORE_LABEL, GREY)


def support_panels(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
) -> list[Panel]:
    """One panel per support pair, its mask tinted green: ``support k: NAME``.

    Args:
        images: K images ``uint8 [H_k, W_k, 3]``.
        masks: K masks ``[H_k, W_k]``, 1 = object, 255 = ignore.
        names: K names for the captions (the image files), or ``None``.
    """
    labels = names if names is not None else [""] * len(images)
    return [
        Panel(fit_image(_annotation(image, mask)), f"support {shot}" + (f": {name}" * bool(name)))
        for shot, (image, mask, name) in enumerate(zip(images, masks, labels, strict=True), 1)
    ]


def query_panels(
    image: np.ndarray,
    prediction: np.ndarray,
    name: str = "query",
    truth: np.ndarray | None = None,
    iou: float | None = None,
) -> list[Panel]:
    """The query, its prediction and, when given, its ground truth.

    Args:
        image: ``uint8 [H, W, 3]``.
        prediction: ``uint8 [H, W]``, 1 = object.
        name: caption of the query panel.
        truth: ``uint8 [H, W]`` ground truth (1 object, 255 ignore), or ``None``.
        iou: IoU of the prediction in percent; with ``truth`` given, ``None`` means neither the
            truth nor the prediction holds the object (captioned :data:`NO_OBJECT`).
    """
    if truth is None:
        caption = "prediction"
    elif iou is None:
        caption = f"prediction: {NO_OBJECT}"
    else:
        caption = f"prediction: IoU {iou:.1f}"
    panels = [
        Panel(fit_image(image), name),
        Panel(fit_image(overlay_mask(image, prediction, RED)), caption),
    ]
    if truth is not None:
        empty = not (truth == 1).any()
        panels.append(
            Panel(fit_image(_annotation(image, truth)), f"ground truth{f': {NO_OBJECT}' * empty}")
        )
    return panels


def render_sheet(rows: Sequence[Sequence[Panel]], title: str | Sequence[str] = ()) -> np.ndarray:
    """Draw title lines, the colour legend and rows of captioned panels on a white sheet.

    Args:
        rows: panels per row, each fitting a :data:`CELL` square.
        title: a line, or lines, above the legend (none: the legend alone); a line too long
            for the sheet is cut in the middle with "...".

    Returns:
        ``uint8 [H, W, 3]``: width grows with the longest row, height with the number of rows.
    """
    title = [title] if isinstance(title, str) else list(title)
    font = ImageFont.load_default(size=_FONT_SIZE)
    columns = max((len(row) for row in rows), default=1)
    top = (len(title) + 1) * (_CAPTION + _GAP)  # the title lines and the legend
    row_height = CELL + _CAPTION + _GAP
    sheet = Image.new(
        "RGB",
        (_GAP + columns * (CELL + _GAP), _GAP + top + len(rows) * row_height),
        _BACKGROUND,
    )
    draw = ImageDraw.Draw(sheet)
    width = sheet.width - 2 * _GAP
    for line_index, line in enumerate(title):
        y = _GAP + line_index * (_CAPTION + _GAP)
        draw.text((_GAP, y), _shorten(draw, line, width, font), _INK, font)
    _draw_legend(draw, _GAP + len(title) * (_CAPTION + _GAP), font)
    for row_index, row in enumerate(rows):
        y = _GAP + top + row_index * row_height
        for column, panel in enumerate(row):
            x = _GAP + column * (CELL + _GAP)
            height, panel_width = panel.image.shape[:2]
            # Bottom-aligned: the caption sits right under every picture.
            sheet.paste(
                Image.fromarray(panel.image), (x + (CELL - panel_width) // 2, y + CELL - height)
            )
            caption = _shorten(draw, panel.caption, CELL, font)
            left = x + (CELL - draw.textlength(caption, font=font)) / 2
            draw.text((left, y + CELL + 3), caption, _INK, font)
    return np.asarray(sheet)


def _draw_legend(
    draw: ImageDraw.ImageDraw, y: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> None:
    """One line of tinted squares, each followed by what the tint marks."""
    x = float(_GAP)
    for colour, meaning in LEGEND:
        draw.rectangle((x, y + 2, x + _SWATCH, y + 2 + _SWATCH), fill=colour, outline=_INK)
        x += _SWATCH + 4
        draw.text((x, y), meaning, _INK, font)
        x += draw.textlength(meaning, font=font) + 3 * _GAP


def _shorten(
    draw: ImageDraw.ImageDraw,
    text: str,
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> str:
    """``text``, cut in the middle with '...' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        shorter = text[: (keep + 1) // 2] + "..." + text[len(text) - keep // 2 :]
        if draw.textlength(shorter, font=font) <= width:
            return shorter
    return "..."
