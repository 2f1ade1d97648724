"""Contact sheets: they grow with the queries, and every panel has a caption drawn under it."""

from __future__ import annotations

import numpy as np

from dpnet_runtime.sheet import query_panels, render_sheet, support_panels


def text_bands(picture: np.ndarray) -> int:
    """Number of lines of black text on white: bands of rows holding dark pixels and no colour
    (the panels are coloured pictures); rows less than 5 apart belong to one band."""
    pixels = picture.astype(int)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 30).any(axis=1)
    dark = (pixels.mean(axis=2) < 100).any(axis=1)
    rows = np.flatnonzero(dark & ~colourful)
    return int(len(rows) > 0) + int((np.diff(rows) >= 5).sum())


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(120, 220, size=(60, 90, 3), dtype=np.uint8)  # no dark pixels
    mask = np.zeros((60, 90), np.uint8)
    mask[10:40, 20:60] = 1
    mask[9, 20:60] = 255
    return image, mask


def _sheet(queries: int, truth: bool = True) -> np.ndarray:
    image, mask = _scene(0)
    rows = [support_panels([image, image], [mask, mask])]
    for index in range(queries):
        query, query_mask = _scene(index + 1)
        rows.append(
            query_panels(
                query, (query_mask == 1).astype(np.uint8), f"query {index}",
                query_mask if truth else None, 71.25 if truth else None,
            )
        )  # fmt: skip
    return render_sheet(rows, "2-shot test sheet")


def test_sheet_grows_with_the_queries_and_draws_a_caption_per_row() -> None:
    one, three = _sheet(1), _sheet(3)
    assert one.dtype == np.uint8 and one.shape[2] == 3
    assert three.shape[1] == one.shape[1]
    assert three.shape[0] > one.shape[0] + 2 * 150  # two more rows of panels
    # Title, support captions and one caption line per query row.
    assert text_bands(one) == 3
    assert text_bands(three) == 5


def test_sheet_without_ground_truth_has_two_panels_per_query() -> None:
    with_truth, without = _sheet(1), _sheet(1, truth=False)
    # The widest row sets the width: three panels with truth, two supports and two without.
    assert with_truth.shape[1] > without.shape[1]
    assert text_bands(without) == 3


def test_panels_show_masks_tinted() -> None:
    image, mask = _scene(0)
    support = support_panels([image], [mask])[0]
    assert support.caption == "support 1"
    prediction = query_panels(image, (mask == 1).astype(np.uint8), "query", mask, 71.25)
    assert [panel.caption for panel in prediction] == [
        "query",
        "prediction (IoU 71.2)",
        "ground truth",
    ]
    scale = support.image.shape[1] / image.shape[1]
    inside = support.image[round(25 * scale), round(40 * scale)].astype(int)
    assert inside[1] > inside[0] and inside[1] > inside[2]  # object tinted green
    red = prediction[1].image[round(25 * scale), round(40 * scale)].astype(int)
    assert red[0] > red[1] and red[0] > red[2]  # prediction tinted red
