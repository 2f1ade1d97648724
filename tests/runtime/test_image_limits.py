"""Images over PIL's pixel limit are one-line errors in every reader, never a crash.

The oversized files are real PNGs (``bilevel_png``: 1-bit grey, a few kB of deflated zeros for
hundreds of millions of pixels): the readers must refuse them from the header, before decoding.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpnet.data import build_dataset
from dpnet.data.pascal import read_image, read_label
from dpnet_runtime.errors import DatasetError, InputError
from dpnet_runtime.preprocess import load_image, load_mask

# PIL's default Image.MAX_IMAGE_PIXELS, pinned: the message must state it.
_LIMIT_MESSAGE = r"at most 89,478,485 pixels \(about 9459 x 9459"


@pytest.fixture(scope="module")
def huge_pngs(
    tmp_path_factory: pytest.TempPathFactory, bilevel_png: Callable[[Path, int, int], Path]
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("huge")
    # 400 M pixels: PIL raises; 100 M: PIL only warns (1x to 2x its limit) and would decode it.
    return {
        "20000": bilevel_png(folder / "20000.png", 20_000, 20_000),
        "10000": bilevel_png(folder / "10000.png", 10_000, 10_000),
    }


def test_the_test_png_is_a_real_image(tmp_path: Path, bilevel_png) -> None:
    path = bilevel_png(tmp_path / "small.png", 13, 7)
    with Image.open(path) as image:
        assert image.size == (13, 7) and image.mode == "1"
        assert not np.asarray(image).any()
    assert load_image(path).shape == (7, 13, 3)


@pytest.mark.parametrize("side", ["20000", "10000"])
@pytest.mark.parametrize("reader", [load_image, load_mask], ids=["load_image", "load_mask"])
def test_runtime_readers_refuse_an_image_over_the_limit(huge_pngs, side, reader) -> None:
    with pytest.raises(InputError, match=_LIMIT_MESSAGE) as raised:
        reader(huge_pngs[side])
    assert f"image {huge_pngs[side]} is too large" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("side", ["20000", "10000"])
def test_a_folder_dataset_refuses_an_image_over_the_limit(huge_pngs, side, tmp_path) -> None:
    for class_name in ("cats", "dogs"):
        (tmp_path / class_name).mkdir()
        for name in ("a.png", "a_mask.png", "b.png", "b_mask.png"):
            shutil.copy(huge_pngs[side], tmp_path / class_name / name)
    with pytest.raises(DatasetError, match=_LIMIT_MESSAGE):
        build_dataset("folder", root=tmp_path, fold=0, split="val", shots=1, seed=0, episodes=1)[0]


@pytest.mark.parametrize("side", ["20000", "10000"])
@pytest.mark.parametrize("reader", [read_image, read_label], ids=["image", "label"])
def test_dataset_readers_refuse_an_image_over_the_limit(huge_pngs, side, reader) -> None:
    with pytest.raises(DatasetError, match=_LIMIT_MESSAGE):
        reader(huge_pngs[side], huge_pngs[side].parent, "layout")
