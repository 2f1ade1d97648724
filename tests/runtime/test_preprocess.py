"""Input validation, the canonical resize and normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime.contract import IMAGENET_MEAN, IMAGENET_STD
from dpnet_runtime.errors import InputError
from dpnet_runtime.preprocess import (
    check_image,
    check_mask,
    load_image,
    load_mask,
    normalize_images,
    prepare_query,
    prepare_support,
    resize_image,
    resize_label_nearest,
)


def _image(height: int = 20, width: int = 30) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(height: int = 20, width: int = 30) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[5:15, 10:20] = 1
    return mask


def test_resize_image_is_pil_bilinear() -> None:
    image = _image()
    resized = resize_image(image, 16)
    expected = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR))
    assert resized.shape == (16, 16, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(resized, expected)


def test_resize_label_nearest_keeps_labels() -> None:
    mask = _mask()
    mask[0, :] = 255
    resized = resize_label_nearest(mask, 41)
    assert resized.shape == (41, 41) and resized.dtype == np.uint8
    assert set(np.unique(resized)) == {0, 1, 255}
    assert set(np.unique(resize_label_nearest(mask.astype(bool), 7))) <= {0, 1}


def test_normalize_images_matches_imagenet_formula() -> None:
    images = _image()[None]
    normalized = normalize_images(images)
    assert normalized.shape == (1, 3, 20, 30) and normalized.dtype == np.float32
    expected = (images[0, 3, 4, 1] / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert normalized[0, 1, 3, 4] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((20, 30), np.uint8), "must be \\[H, W, 3\\] RGB, got rank 2"),
        (np.zeros((20, 30, 4), np.uint8), "must have 3 channels.*drop alpha"),
        (np.zeros((3, 20, 30), np.uint8), "must have 3 channels.*move channels last"),
        (np.zeros((20, 30, 3), np.float32), "must be uint8 0..255, got float32"),
        ([[0]], "must be a numpy array"),
    ],
)
def test_check_image_rejects_bad_images(image: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_image(image, "query image")


@pytest.mark.parametrize(
    "mask",
    [
        _mask().astype(bool),
        _mask().astype(np.float32),
        _mask().astype(np.int64),
        np.where(np.arange(30) < 2, 255, _mask()).astype(np.uint8),
    ],
)
def test_check_mask_accepts_bool_and_01_with_ignore(mask: np.ndarray) -> None:
    binary = check_mask(mask, "support mask 1", (20, 30, 3))
    assert binary.dtype == np.uint8
    np.testing.assert_array_equal(binary, _mask())


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.zeros((20, 30), np.uint8), "has no object pixel"),
        (_mask() * 255, "has no object pixel.*255 means ignore.*mask > 127"),
        (_mask() * 200, "expected 0 \\(background\\), 1 \\(object\\) or 255.*mask > 127"),
        # Small class ids: a label map, refused with the message every interface gives.
        (_mask() * 2, "looks like a class-label map \\(values \\[0, 2\\]\\).*class_id=N"),
        (_mask().astype(str), r"has dtype <U\d+; expected bool, integers or floats"),
        (_mask()[:10], "is \\[10, 30\\] but its image is \\[20, 30\\]"),
        (_mask()[None], "must be \\[H, W\\]"),
    ],
)
def test_check_mask_rejects_bad_masks(mask: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_mask(mask, "support mask 1", (20, 30, 3))


def test_prepare_support_stacks_shots() -> None:
    images, masks = prepare_support(
        [_image(), _image(40, 24)], [_mask(), _mask(40, 24)], 32, raw_input=False, max_shots=5
    )
    assert images.shape == (1, 2, 3, 32, 32) and images.dtype == np.float32
    assert masks.shape == (1, 2, 32, 32) and masks.dtype == np.float32
    raw_images, raw_masks = prepare_support(
        [_image()], [_mask()], 32, raw_input=True, max_shots=None
    )
    assert raw_images.shape == (1, 1, 32, 32, 3) and raw_images.dtype == np.uint8
    assert raw_masks.dtype == np.uint8


@pytest.mark.parametrize(
    ("count_images", "count_masks", "max_shots", "message"),
    [
        (2, 1, 5, "got 2 support images but 1 masks"),
        (0, 0, 5, "no support image"),
        (3, 3, 2, "got 3 support shots but the graph allows at most 2.*--max-shots 3"),
    ],
)
def test_prepare_support_rejects_bad_shot_counts(
    count_images: int, count_masks: int, max_shots: int, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        prepare_support(
            [_image()] * count_images,
            [_mask()] * count_masks,
            32,
            raw_input=False,
            max_shots=max_shots,
        )


def test_prepare_support_rejects_object_lost_in_resize() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[101, 101] = 1
    with pytest.raises(InputError, match="vanishes when resized to 16x16"):
        prepare_support([_image(200, 200)], [mask], 16, raw_input=False, max_shots=None)


def test_prepare_query_shapes() -> None:
    assert prepare_query(_image(), 32, raw_input=False).shape == (1, 3, 32, 32)
    assert prepare_query(_image(), 32, raw_input=True).shape == (1, 32, 32, 3)


def test_load_mask_reads_01_and_0255_pngs(tmp_path: Path) -> None:
    Image.fromarray(_mask()).save(tmp_path / "labels.png")
    Image.fromarray(_mask() * 255).save(tmp_path / "binary.png")
    Image.fromarray(np.stack([_mask() * 200] * 3, axis=-1)).save(tmp_path / "rgb.png")
    for name in ("labels.png", "binary.png", "rgb.png"):
        np.testing.assert_array_equal(load_mask(tmp_path / name), _mask())


def test_load_image_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "absent.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "bad.jpg")
    Image.fromarray(_image()).save(tmp_path / "ok.png")
    assert load_image(tmp_path / "ok.png").shape == (20, 30, 3)
