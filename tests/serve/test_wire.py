"""The HTTP wire format: mask files read as dpnet-segment reads them, image limits, PNG round
trips and COCO RLE."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from dpnet_runtime.errors import InputError
from dpnet_runtime.preprocess import check_mask, load_mask
from dpnet_serve.wire import (
    CHUNK_DECODE_BUDGET_BYTES,
    TOTAL_DECODE_BUDGET_BYTES,
    OversizedImageError,
    UndecodableImageError,
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
    # A bool array, as the client checks it before sending, means the same.
    np.testing.assert_array_equal(check_mask(mask > 0, "mask", (5, 7, 3)), decoded)


def _upload_and_file(tmp_path: Path, data: bytes, class_id: int | None = None) -> list[object]:
    """What an upload and the same bytes read as a dpnet-segment file give: the array, or the
    error's text after the mask's name."""
    (tmp_path / "m.png").write_bytes(data)
    outcomes: list[object] = []
    for name, read in (
        ("support mask 2", lambda: decode_mask(data, "support mask 2", max_pixels=100,
                                               class_id=class_id)),
        (f"mask {tmp_path / 'm.png'}", lambda: load_mask(tmp_path / "m.png", class_id=class_id)),
    ):  # fmt: skip
        try:
            outcomes.append(read().tolist())
        except InputError as exc:
            outcomes.append(str(exc).removeprefix(f"{name} "))
    return outcomes


@pytest.mark.parametrize(
    ("values", "class_id", "expected"),
    [
        ([0, 1, 255], None, [[0, 1, 255]]),  # VOC-style: 1 = object, 255 = ignore
        ([0, 128, 255], None, [[0, 1, 1]]),  # grey levels: object above 127
        ([0, 7, 255, 3], 7, [[0, 1, 255, 0]]),  # a label map with its class id
        ([0, 7, 255], None, "looks like a class-label map (values [0, 7, 255]); give the class"),
        ([0, 7, 255], 255, "class id must be in 1..254"),
    ],
    ids=["0-1-255", "grey", "label-map-class-id", "label-map", "bad-class-id"],
)
def test_uploads_are_read_as_mask_files(
    tmp_path: Path, values: list[int], class_id: int | None, expected: object
) -> None:
    upload, file = _upload_and_file(tmp_path, _png(np.array([values], np.uint8)), class_id)
    assert upload == file
    if isinstance(expected, str):
        assert isinstance(upload, str) and upload.startswith(expected.split("; give")[0]), upload
    else:
        assert upload == expected


def test_colour_and_palette_masks_are_read_as_files_are(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 1:4] = 255
    colour = _png(np.repeat(mask[..., None], 3, axis=-1))  # an RGB black-and-white mask
    upload, file = _upload_and_file(tmp_path, colour)
    assert upload == file == (mask > 0).astype(np.uint8).tolist()
    palette = _png(np.where(mask > 0, 7, 0).astype(np.uint8), "P")  # a palette label map
    upload, file = _upload_and_file(tmp_path, palette)
    assert upload == file and isinstance(upload, str) and "class-label map" in upload


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


def _png_with(pixels: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("chunk", ["zTXt", "iTXt", "iCCP"])
def test_a_metadata_chunk_that_inflates_past_the_budget_is_a_bad_image(chunk: str) -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    inflated = b"\0" * (64 * 1024 * 1024)  # 64 MiB of zeros: a file of about 64 KiB
    if chunk == "iCCP":
        data = _png_with(pixels, icc_profile=inflated)
    else:
        info = PngImagePlugin.PngInfo()
        if chunk == "zTXt":
            info.add_text("comment", inflated.decode(), zip=True)
        else:
            info.add_itxt("comment", inflated.decode(), lang="en", tkey="c", zip=True)
        data = _png_with(pixels, pnginfo=info)
    assert len(data) < 1024 * 1024 and chunk.encode() in data
    with pytest.raises(UndecodableImageError, match=f"its {chunk} chunk inflates beyond the ser"):
        decode_image(data, "image 1", max_pixels=100)
    with pytest.raises(UndecodableImageError, match="decode budget"):
        decode_mask(data, "mask 1", max_pixels=100)
    # Metadata within the budget is fine.
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 1000, zip=True)
    assert decode_image(_png_with(pixels, pnginfo=info), "image 1", max_pixels=100).shape == (
        8, 8, 3,
    )  # fmt: skip


def test_many_small_chunks_share_one_budget() -> None:
    info = PngImagePlugin.PngInfo()
    for index in range(TOTAL_DECODE_BUDGET_BYTES // CHUNK_DECODE_BUDGET_BYTES + 1):
        info.add_text(f"k{index}", "y" * CHUNK_DECODE_BUDGET_BYTES, zip=True)
    data = _png_with(np.zeros((4, 4), np.uint8), pnginfo=info)
    with pytest.raises(UndecodableImageError, match="metadata chunks inflate beyond"):
        decode_image(data, "image 1", max_pixels=100)


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_a_huge_image_quotes_the_servers_pixel_limit_not_pils(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("1" if fmt == "PNG" else "L", (20000, 20000)).save(buffer, format=fmt)
    data = buffer.getvalue()[:4096]  # the header says the size; the pixels never arrive
    with pytest.raises(OversizedImageError) as caught:
        decode_image(data, "image", max_pixels=40000)
    message = str(caught.value)
    assert "the server accepts at most 40000 pixels" in message
    assert "--max-image-pixels" in message and "decompression bomb" not in message.lower()
    assert str(Image.MAX_IMAGE_PIXELS) not in message


def test_formats_beyond_png_jpeg_bmp_webp_are_refused() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buffer, format="TIFF")
    with pytest.raises(UndecodableImageError, match=r"\(PNG, JPEG, BMP, WEBP\)"):
        decode_image(buffer.getvalue(), "image", max_pixels=100)
