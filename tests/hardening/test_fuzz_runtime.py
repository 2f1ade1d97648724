"""Fuzzing the runtime's inputs: every case works or raises a DpnetError, fast, no leaks.

Hypothesis draws arrays of random rank, shape and dtype (uint8, float64, float32, int32, bool,
uint16, strings), NaN/Inf pixels, masks with odd values, zero-size and large images, and
K from 0 to 10, and feeds them to the validating pre-processing functions and to
``Predictor.encode_support`` / ``segment`` / ``run_episode`` on a real tiny export. Anything
other than a result or a :class:`DpnetError` (a numpy ``IndexError``, a PIL ``TypeError``, an
onnxruntime ``Fail``) is a bug. A watchdog kills the run if one call hangs. The CLI part runs
``dpnet-segment`` on bad files and checks for one error line, exit 1, no traceback.
"""

from __future__ import annotations

import faulthandler
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from dpnet_runtime import Predictor
from dpnet_runtime.errors import DpnetError
from dpnet_runtime.preprocess import check_image, check_mask, prepare_query, prepare_support

pytestmark = pytest.mark.slow

SIZE = 65
_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_HANG_SECONDS = 120

DTYPES = st.sampled_from(
    ["uint8", "float64", "float32", "float16", "int32", "int64", "bool", "uint16", "int8",
     "complex64", "U2"]
)  # fmt: skip


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    # A hang must fail the run with a traceback instead of stalling CI.
    faulthandler.dump_traceback_later(_HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module", params=["small_export", "small_raw_export"])
def predictor(request: pytest.FixtureRequest) -> Iterator[Predictor]:
    """The tiny export with normalised float inputs, then with raw uint8 inputs."""
    with Predictor.open(request.getfixturevalue(request.param), intra_op_threads=1) as opened:
        yield opened


@st.composite
def arrays(draw: st.DrawFn, *, max_side: int = 12) -> np.ndarray:
    """Any rank 0..4, any dtype, sides 0..max_side (3 channels often), NaN/Inf for floats."""
    dtype = np.dtype(draw(DTYPES))
    rank = draw(st.integers(0, 4))
    shape = [draw(st.integers(0, max_side)) for _ in range(rank)]
    if rank == 3 and draw(st.booleans()):
        shape[2] = 3
    elements = None
    if dtype.kind == "f":
        width: Literal[16, 32, 64] = {2: 16, 4: 32, 8: 64}[dtype.itemsize]  # type: ignore[assignment]
        elements = st.floats(allow_nan=True, allow_infinity=True, width=width)
    return draw(hnp.arrays(dtype, tuple(shape), elements=elements))


def valid_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : max(height // 4 + 1, 3 * height // 4), : max(1, width // 2)] = 1
    return image, mask


@st.composite
def odd_masks(draw: st.DrawFn, height: int, width: int) -> Any:
    """Masks of the right size with odd values and dtypes, or anything at all."""
    kind = draw(st.sampled_from(["values", "float", "bool", "any"]))
    if kind == "values":
        values = st.sampled_from([0, 1, 2, 127, 128, 254, 255])
        return draw(hnp.arrays(draw(st.sampled_from([np.uint8, np.int64, np.uint16])),
                               (height, width), elements=values))  # fmt: skip
    if kind == "float":
        return draw(hnp.arrays(np.float64, (height, width), elements=st.floats()))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, (height, width)))
    return draw(st.one_of(arrays(), st.none(), st.text(max_size=3), st.lists(st.integers())))


def works_or_dpnet_error(call: Callable[[], Any]) -> Any:
    """Run ``call``; a DpnetError is a valid answer; any other exception fails the test."""
    try:
        return call()
    except DpnetError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), f"not one line: {exc!r}"
        return exc


@_SETTINGS
@given(image=st.one_of(arrays(), st.none(), st.integers(), st.text(max_size=3)))
def test_check_and_prepare_query_any_input(image: Any) -> None:
    works_or_dpnet_error(lambda: check_image(image, "query image"))
    result = works_or_dpnet_error(lambda: prepare_query(image, SIZE, raw_input=False))
    if isinstance(result, np.ndarray):
        assert result.shape == (1, 3, SIZE, SIZE) and result.dtype == np.float32
        assert np.isfinite(result).all()


@_SETTINGS
@given(mask=st.data(), shape=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_check_mask_odd_values(mask: st.DataObject, shape: tuple[int, int]) -> None:
    drawn = mask.draw(odd_masks(*shape))
    result = works_or_dpnet_error(lambda: check_mask(drawn, "support mask 1", (*shape, 3)))
    if isinstance(result, np.ndarray):
        assert result.dtype == np.uint8 and set(np.unique(result)) <= {0, 1} and result.any()


@st.composite
def support_sets(draw: st.DrawFn) -> tuple[list[Any], list[Any]]:
    """K in 0..10 pairs, each valid or broken in its image, its mask or both; maybe K mismatch."""
    shots = draw(st.one_of(st.integers(1, 2), st.integers(0, 10)))
    images: list[Any] = []
    masks: list[Any] = []
    for shot in range(shots):
        height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        image, mask = valid_pair(height, width, shot)
        broken = draw(st.sampled_from(["none", "none", "none", "image", "mask", "both"]))
        images.append(draw(arrays()) if broken in ("image", "both") else image)
        masks.append(draw(odd_masks(height, width)) if broken in ("mask", "both") else mask)
    if masks and draw(st.integers(0, 3)) == 0:
        masks = masks[: draw(st.integers(0, len(masks) - 1))]
    return images, masks


@_SETTINGS
@given(supports=support_sets())
def test_prepare_support_any_shots(supports: tuple[list[Any], list[Any]]) -> None:
    images, masks = supports
    result = works_or_dpnet_error(
        lambda: prepare_support(images, masks, SIZE, raw_input=False, max_shots=5)
    )
    if isinstance(result, tuple):
        assert result[0].shape == (1, len(images), 3, SIZE, SIZE)
        assert np.isfinite(result[0]).all()


@_SETTINGS
@given(supports=support_sets(), query=st.one_of(arrays(max_side=40), st.none()))
def test_predictor_any_support_and_query(
    predictor: Predictor, supports: tuple[list[Any], list[Any]], query: Any
) -> None:
    images, masks = supports
    support = works_or_dpnet_error(lambda: predictor.encode_support(images, masks))
    event(f"support {type(support).__name__}")  # --hypothesis-show-statistics: the mix
    for target in (query, valid_pair(30, 20, 7)[0]):
        if not isinstance(support, DpnetError):
            result = works_or_dpnet_error(partial(predictor.segment, target, support))
            if not isinstance(result, DpnetError):
                assert result.mask.shape == target.shape[:2]
        works_or_dpnet_error(partial(predictor.run_episode, images, masks, target))


def test_nan_and_inf_float_images_are_rejected_with_the_conversion_hint(
    predictor: Predictor,
) -> None:
    image, mask = valid_pair(20, 20, 0)
    support = predictor.encode_support([image], [mask])
    for value in (np.nan, np.inf, -np.inf):
        with pytest.raises(DpnetError, match="uint8"):
            predictor.segment(np.full((20, 20, 3), value), support)


def test_huge_and_extreme_images_work(predictor: Predictor) -> None:
    image, mask = valid_pair(40, 40, 0)
    support = predictor.encode_support([image], [mask])
    for shape in ((5000, 5000, 3), (1, 5000, 3), (5000, 1, 3), (1, 1, 3)):
        query = np.full(shape, 128, np.uint8)
        assert predictor.segment(query, support).mask.shape == shape[:2]
    big_image, big_mask = valid_pair(5000, 5000, 1)
    assert predictor.run_episode([big_image], [big_mask], image).mask.shape == (40, 40)


def test_a_support_set_from_another_predictor_is_rejected(predictor: Predictor) -> None:
    image, mask = valid_pair(30, 30, 0)
    support = predictor.encode_support([image], [mask])
    foreign = type(support)(shots=1, feeds=())
    with pytest.raises(DpnetError, match="another Predictor"):
        predictor.segment(image, foreign)


# --- dpnet-segment, lightly: one error line, exit 1, no traceback ------------------------


def _write(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    image, mask = valid_pair(30, 40, 0)
    (folder / "notes.png").write_text("not an image\n")
    (folder / "truncated.png").write_bytes((_write(folder / "ok.png", image)).read_bytes()[:60])
    (folder / "empty_model").mkdir()
    return {
        "image": folder / "ok.png",
        "mask": _write(folder / "mask.png", mask * 255),
        "small_mask": _write(folder / "small_mask.png", mask[:10, :10] * 255),
        "blank_mask": _write(folder / "blank_mask.png", mask * 0),
        "text": folder / "notes.png",
        "truncated": folder / "truncated.png",
        "missing": folder / "missing.png",
        "empty_model": folder / "empty_model",
    }


CLI_CASES = {
    "missing model": ("empty_model", "image", "mask", "image"),
    "missing query": ("model", "image", "mask", "missing"),
    "missing support image": ("model", "missing", "mask", "image"),
    "text file as image": ("model", "text", "mask", "image"),
    "truncated query": ("model", "image", "mask", "truncated"),
    "mask size mismatch": ("model", "image", "small_mask", "image"),
    "empty mask": ("model", "image", "blank_mask", "image"),
    "image given as model": ("image", "image", "mask", "image"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_segment_cli_bad_inputs_give_one_line(
    case: str, cli_files: dict[str, Path], small_export: Path, tmp_path: Path
) -> None:
    files = {**cli_files, "model": small_export}
    model, image, mask, query = (files[key] for key in CLI_CASES[case])
    out = tmp_path / "out.png"
    command = [sys.executable, "-m", "dpnet_runtime", "--model", str(model), "--query",
               str(query), "--support", f"{image}:{mask}", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert "Traceback" not in output and "internal error" not in output
    assert len(output.splitlines()) == 1, output
    assert not out.exists()
