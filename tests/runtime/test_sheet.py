"""Contact sheets: they grow with the queries, and every panel has a caption drawn under it."""

from __future__ import annotations

import numpy as np

from dpnet_runtime.sheet import LEGEND, NO_OBJECT, query_panels, render_sheet, support_panels


def text_bands(picture: np.ndarray) -> int:
    """Number of lines of black text on white: bands of rows holding dark pixels and no colour
    (the panels are coloured pictures); rows less than 5 apart belong to one band. The colour
    legend's swatches cut its line into :data:`LEGEND_BANDS` bands."""
    pixels = picture.astype(int)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2) > 30).any(axis=1)
    dark = (pixels.mean(axis=2) < 100).any(axis=1)
    rows = np.flatnonzero(dark & ~colourful)
    return int(len(rows) > 0) + int((np.diff(rows) >= 5).sum())


LEGEND_BANDS = text_bands(render_sheet([], ()))


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
    # Title, legend, support captions and one caption line per query row.
    assert LEGEND_BANDS >= 1
    assert text_bands(one) == 1 + LEGEND_BANDS + 2
    assert text_bands(three) == 1 + LEGEND_BANDS + 4


def test_sheet_without_ground_truth_has_two_panels_per_query() -> None:
    with_truth, without = _sheet(1), _sheet(1, truth=False)
    # The widest row sets the width: three panels with truth, two supports and two without.
    assert with_truth.shape[1] > without.shape[1]
    assert text_bands(without) == 1 + LEGEND_BANDS + 2


def test_panels_show_masks_tinted() -> None:
    image, mask = _scene(0)
    support = support_panels([image], [mask])[0]
    assert support.caption == "support 1"
    prediction = query_panels(image, (mask == 1).astype(np.uint8), "query", mask, 71.25)
    assert [panel.caption for panel in prediction] == [
        "query",
        "prediction: IoU 71.2",
        "ground truth",
    ]
    scale = support.image.shape[1] / image.shape[1]
    inside = support.image[round(25 * scale), round(40 * scale)].astype(int)
    assert inside[1] > inside[0] and inside[1] > inside[2]  # object tinted green
    red = prediction[1].image[round(25 * scale), round(40 * scale)].astype(int)
    assert red[0] > red[1] and red[0] > red[2]  # prediction tinted red


def test_support_captions_name_their_files() -> None:
    image, mask = _scene(0)
    panels = support_panels([image, image], [mask, mask], ["cat1.jpg", "cat2.jpg"])
    assert [panel.caption for panel in panels] == ["support 1: cat1.jpg", "support 2: cat2.jpg"]


def test_no_object_is_captioned_as_such_and_a_false_alarm_scores() -> None:
    image, _ = _scene(0)
    empty = np.zeros(image.shape[:2], np.uint8)
    right = query_panels(image, empty, "query", empty, None)
    assert [panel.caption for panel in right][1:] == [
        f"prediction: {NO_OBJECT}",
        f"ground truth: {NO_OBJECT}",
    ]
    alarm = query_panels(image, np.ones_like(empty), "query", empty, 0.0)
    assert [panel.caption for panel in alarm][1:] == [
        "prediction: IoU 0.0",
        "ground truth: no object",
    ]


def test_the_legend_shows_every_tint_the_panels_use() -> None:
    image, mask = _scene(0)
    support = support_panels([image], [mask])[0].image
    legend = render_sheet([], ())  # the legend alone
    colours = {tuple(pixel) for pixel in legend.reshape(-1, 3).tolist()}
    assert {colour for colour, _ in LEGEND} <= colours
    # The support's object is tinted with the legend's "annotated object" colour.
    scale = support.shape[1] / image.shape[1]
    inside = support[round(25 * scale), round(40 * scale)].astype(int)
    green = np.asarray(LEGEND[0][0])
    assert np.argmax(inside) == np.argmax(green)
