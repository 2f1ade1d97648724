"""The mask rule: files (0/1, 0/255, 0/1/255, grey, label maps) and arrays, one semantics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet_runtime.errors import InputError
from dpnet_runtime.masks import MASK_RULES, decode_mask, mask_rules_markdown
from dpnet_runtime.preprocess import check_mask, load_image, load_mask

OBJECT = (slice(2, 6), slice(3, 9))
BORDER = (slice(1, 2), slice(3, 9))


def _values(object_value: int, ignore_value: int | None = None) -> np.ndarray:
    values = np.zeros((8, 12), np.uint8)
    values[OBJECT] = object_value
    if ignore_value is not None:
        values[BORDER] = ignore_value
    return values


def _expected(ignore: bool) -> np.ndarray:
    """The array the Python API takes: 1 object, 0 background, 255 ignore."""
    expected = np.zeros((8, 12), np.uint8)
    expected[OBJECT] = 1
    if ignore:
        expected[BORDER] = 255
    return expected


def _save(tmp_path: Path, values: np.ndarray, mode: str | None = None) -> Path:
    path = tmp_path / "mask.png"
    image = Image.fromarray(values)
    if mode == "P":
        image = image.convert("P")
    elif mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("values", "ignore"),
    [
        (_values(1), False),  # 0/1: 1 = object
        (_values(255), False),  # 0/255: 255 = object
        (_values(1, 255), True),  # 0/1/255: 1 = object, 255 = ignore
    ],
    ids=["0-1", "0-255", "0-1-255"],
)
def test_mask_files_decode_to_the_api_arrays(
    tmp_path: Path, values: np.ndarray, ignore: bool
) -> None:
    mask = load_mask(_save(tmp_path, values))
    np.testing.assert_array_equal(mask, _expected(ignore))
    # The decoded file is what a Predictor takes: ignore counts as background for a support.
    np.testing.assert_array_equal(check_mask(mask, "support mask 1", (8, 12, 3)), _expected(False))


def test_grey_and_colour_masks_threshold_at_127(tmp_path: Path) -> None:
    soft = _values(255)
    soft[OBJECT[0], 3] = 200  # anti-aliased edge: grey levels on both sides of 127
    soft[OBJECT[0], 9] = 60
    np.testing.assert_array_equal(load_mask(_save(tmp_path, soft)), _expected(False))
    colour = np.repeat(_values(255)[..., None], 3, axis=-1)
    np.testing.assert_array_equal(load_mask(_save(tmp_path, colour)), _expected(False))


def test_sixteen_bit_masks_are_scaled(tmp_path: Path) -> None:
    values = _values(1).astype(np.uint16) * 65535
    values[7, :6], values[7, 6:] = 20000, 50000  # a soft edge: 78 and 195 of 255
    expected = _expected(False)
    expected[7, 6:] = 1
    np.testing.assert_array_equal(load_mask(_save(tmp_path, values)), expected)


def test_class_id_reads_label_maps(tmp_path: Path) -> None:
    label = _values(7, 255)
    label[6:8, :] = 3  # another class: background for class 7
    path = _save(tmp_path, label, "P")
    np.testing.assert_array_equal(load_mask(path, class_id=7), _expected(True))
    with pytest.raises(InputError, match=r"class id must be in 1\.\.254"):
        load_mask(path, class_id=255)


@pytest.mark.parametrize("mode", ["P", None], ids=["palette", "grey"])
def test_label_maps_without_class_id_are_refused(tmp_path: Path, mode: str | None) -> None:
    path = _save(tmp_path, _values(7, 255), mode)
    with pytest.raises(
        InputError, match=r"mask .*mask\.png looks like a class-label map.*--class-id"
    ):
        load_mask(path)


def test_arrays_keep_255_as_ignore() -> None:
    """Python API arrays: 255 is ignore, never object (a 0/255 array has no object)."""
    with pytest.raises(InputError, match=r"no object pixel.*255 means ignore"):
        check_mask(_values(255), "support mask 1", (8, 12, 3))


def test_sixteen_bit_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    grey = (np.arange(8 * 12, dtype=np.uint16).reshape(8, 12) * 600).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    image = load_image(tmp_path / "grey16.png")
    assert image.shape == (8, 12, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], np.round(grey / 257).astype(np.uint8))
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 1] = 90
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[0, 0].tolist() == [0, 90, 0]


def test_label_map_arrays_read_as_label_map_files(tmp_path: Path) -> None:
    label = _values(7, 255)
    label[6:8, :] = 3
    from_file = load_mask(_save(tmp_path, label, "P"), class_id=7)
    np.testing.assert_array_equal(decode_mask(label, "support mask 1", class_id=7, array=True),
                                  from_file)  # fmt: skip
    np.testing.assert_array_equal(check_mask(label, "m", (8, 12, 3), class_id=7), _expected(False))
    # Without the class id, the same line as for the file, after the mask's name.
    with pytest.raises(InputError) as from_array:
        check_mask(label, "support mask 1", (8, 12, 3))
    with pytest.raises(InputError) as file_error:
        load_mask(tmp_path / "mask.png")
    assert str(from_array.value).removeprefix("support mask 1 ") == str(
        file_error.value
    ).removeprefix(f"mask {tmp_path / 'mask.png'} ")


@pytest.mark.parametrize(
    ("values", "as_file", "as_array"),
    [
        ([0, 1], [0, 1], [0, 1]),
        ([0, 1, 255], [0, 1, 255], [0, 1, 255]),
        ([0, 255], [0, 1], [0, 255]),  # an array's 255 is ignore: no object (check_mask refuses)
        ([0, 60, 200, 255], [0, 0, 1, 1], "or bool: for 0/255 and grey masks pass (mask > 127)"),
    ],
    ids=["0-1", "0-1-255", "0-255", "grey"],
)
def test_the_file_and_array_columns(values: list[int], as_file: object, as_array: object) -> None:
    pixels = np.array([values], np.uint8)
    assert decode_mask(pixels, "m.png").tolist() == [as_file]
    if isinstance(as_array, str):
        with pytest.raises(InputError, match=re.escape(as_array)):
            decode_mask(pixels, "support mask 1", array=True)
    else:
        assert decode_mask(pixels, "support mask 1", array=True).tolist() == [as_array]


def test_docs_and_help_show_the_one_table() -> None:
    segment_page = (Path(__file__).parents[2] / "docs" / "segment.md").read_text()
    assert mask_rules_markdown() in segment_page
    shown = subprocess.run(
        [sys.executable, "-m", "dpnet_runtime", "--help"],
        capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "COLUMNS": "400"},
    ).stdout  # fmt: skip
    help_text = " ".join(shown.split())
    for rule in MASK_RULES:
        if rule.in_file != "(no such file)":
            assert f"{rule.values}: {rule.in_file}" in help_text, rule
