"""The HTTP wire format: mask conventions, image limits, PNG round trips and COCO RLE."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime.errors import InputError
from dpnet_serve.wire import (
    OversizedImageError,
    binary_mask,
    decode_image,
    decode_mask,
    encode_image,
    encode_png,
    mask_from_png,
    mask_to_png,
    mask_to_rle,
    rle_to_mask,
)


def _png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode_rle_independently(rle: dict[str, object]) -> np.ndarray:
    height, width = rle["size"]  # type: ignore[misc]
    flat = np.zeros(height * width, np.uint8)
    position, value = 0, 0
    for count in rle["counts"]:  # type: ignore[attr-defined]
        flat[position : position + count] = value
        position, value = position + count, 1 - value
    return flat.reshape((width, height)).T


@pytest.mark.parametrize("object_value", [1, 255])
def test_masks_0_1_and_0_255_mean_the_same(object_value: int) -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = object_value
    decoded = decode_mask(_png(mask), "mask 1", max_pixels=100)
    np.testing.assert_array_equal(decoded, (mask > 0).astype(np.uint8))
    np.testing.assert_array_equal(binary_mask(mask > 0, "mask"), decoded)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0, 1, 255], "mask 2 has values \\[0, 1, 255\\]; expected 0/1 or 0/255"),
        ([0, 128], "mask 2 has values \\[0, 128\\]"),
    ],
)
def test_other_mask_values_are_refused(values: list[int], message: str) -> None:
    mask = np.array([values], np.uint8)
    with pytest.raises(InputError, match=message):
        decode_mask(_png(mask), "mask 2", max_pixels=100)


def test_a_colour_mask_is_refused() -> None:
    with pytest.raises(InputError, match="mask 1 is a RGB image; a mask must have one channel"):
        decode_mask(_png(np.zeros((4, 4, 3), np.uint8)), "mask 1", max_pixels=100)


def test_images_decode_to_rgb_and_bad_bytes_are_input_errors() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = decode_image(_png(grey), "image 1", max_pixels=100)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], grey)
    with pytest.raises(InputError, match="image 1 is not an image format the server reads"):
        decode_image(b"not an image", "image 1", max_pixels=100)
    with pytest.raises(InputError, match=r"image 1 (cannot be decoded|is not an image)"):
        decode_image(_png(grey)[:40], "image 1", max_pixels=100)


def test_oversized_images_are_refused_before_decoding() -> None:
    with pytest.raises(OversizedImageError, match="image is 11x10; the server accepts at most 100"):
        decode_image(_png(np.zeros((10, 11, 3), np.uint8)), "image", max_pixels=100)
    assert decode_image(_png(np.zeros((10, 10, 3), np.uint8)), "image", max_pixels=100).shape == (
        10, 10, 3,
    )  # fmt: skip


def test_image_and_mask_round_trips_are_lossless() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)  # odd width: BMP rows are padded
    for encode in (encode_image, encode_png):
        decoded = decode_image(encode(image), "image", max_pixels=10**6)
        np.testing.assert_array_equal(decoded, image)
    mask = (rng.random((17, 23)) > 0.5).astype(np.uint8)
    png = mask_to_png(mask)
    assert set(np.unique(np.asarray(Image.open(io.BytesIO(png)))).tolist()) == {0, 255}
    np.testing.assert_array_equal(mask_from_png(png), mask)


@pytest.mark.parametrize("first", [0, 1])
def test_rle_is_coco_column_major_starting_with_background(first: int) -> None:
    rng = np.random.default_rng(first)
    mask = (rng.random((6, 9)) > 0.6).astype(np.uint8)
    mask[0, 0] = first
    rle = mask_to_rle(mask)
    assert rle["size"] == [6, 9]
    assert (rle["counts"][0] == 0) == bool(first)
    assert sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(_decode_rle_independently(rle), mask)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    with pytest.raises(InputError, match="add up to"):
        rle_to_mask({"size": [6, 9], "counts": rle["counts"][:-1]})
