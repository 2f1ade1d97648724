"""Resizing logits back, the multi-scale merge, masks and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime.errors import InputError
from dpnet_runtime.postprocess import (
    logits_to_probabilities,
    merge_scales,
    overlay_mask,
    probabilities_to_mask,
    resize_logits,
    save_image,
)


def _logits(size: int = 8) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((2, size, size)).astype(np.float32)


def test_resize_logits_shape_and_identity() -> None:
    logits = _logits()
    assert resize_logits(logits, 20, 30).shape == (2, 20, 30)
    np.testing.assert_array_equal(resize_logits(logits, 8, 8), logits)


def test_resize_logits_is_bilinear_between_pixels() -> None:
    logits = np.zeros((2, 1, 2), np.float32)
    logits[1, 0, 1] = 4.0
    row = resize_logits(logits, 1, 4)[1, 0]
    # Half-pixel centres: output pixels sit at 0.25, 0.75, 1.25, 1.75 of the input grid.
    np.testing.assert_allclose(row, [0.0, 1.0, 3.0, 4.0], atol=1e-5)


def test_probabilities_are_the_softmax_over_classes() -> None:
    logits = np.array([[[0.0, 0.0]], [[np.log(3.0), 0.0]]], np.float32)  # [2, 1, 2]
    np.testing.assert_allclose(
        logits_to_probabilities(logits), [[[0.25, 0.5]], [[0.75, 0.5]]], rtol=1e-6
    )
    probabilities = logits_to_probabilities(_logits() * 50)  # no overflow for large logits
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, rtol=1e-6)
    assert np.isfinite(probabilities).all()


def test_merge_scales_averages_softmax_at_original_size() -> None:
    # Scale 1: a 1 x 1 map, object logit ln 3 above background: p(object) = 3/4 everywhere once
    # resized to 2 x 2. Scale 2: already 2 x 2, object minus background logits 0, ln 3, -ln 3,
    # 0: p(object) = 1/2, 3/4, 1/4, 1/2. The average of the probabilities (not of the logits,
    # which would give sigmoid(ln 3 / 2) = 0.634 at the first pixel):
    small = np.array([[[0.0]], [[np.log(3.0)]]], np.float32)
    large = np.zeros((2, 2, 2), np.float32)
    large[1] = [[0.0, np.log(3.0)], [-np.log(3.0), 0.0]]
    merged = merge_scales([small, large], 2, 2)
    np.testing.assert_allclose(merged[1], [[0.625, 0.75], [0.5, 0.625]], rtol=1e-6)
    np.testing.assert_allclose(merged[0], [[0.375, 0.25], [0.5, 0.375]], rtol=1e-6)
    with pytest.raises(InputError):
        merge_scales([], 10, 10)


def test_mask_ties_go_to_background() -> None:
    probabilities = np.full((2, 2, 2), 0.5, np.float32)
    probabilities[1, 0, 0] = 0.6
    probabilities[0, 0, 0] = 0.4
    np.testing.assert_array_equal(probabilities_to_mask(probabilities), [[1, 0], [0, 0]])


def test_overlay_tints_only_object_pixels() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[1, 0], [0, 0]], np.uint8)
    overlay = overlay_mask(image, mask)
    np.testing.assert_array_equal(overlay[0, 0], [178, 50, 50])
    np.testing.assert_array_equal(overlay[1, 1], [100, 100, 100])


def test_save_image_writes_visible_mask(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    save_image(path, np.array([[1, 0]], np.uint8))
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[255, 0]])
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]
