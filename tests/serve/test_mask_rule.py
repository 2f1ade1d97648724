"""One mask rule on every interface: the same masks give the same support set, or the same
one-line error, through dpnet-segment (a subprocess), Predictor, HTTP (a real dpnet-serve on
127.0.0.1 with a --store folder) and dpnet_serve.Client.

A mask *file* goes to the CLI and the HTTP upload; its pixel values, as a numpy *array*, go to
Predictor and the Client (the two columns of ``dpnet_runtime.masks.MASK_RULES``). Encodings are
compared through real calls: the server's stored support tensors against Predictor's, and the
segmentation of a query (mask and pseudo_count) against Predictor's on ``encodes_like``, a plain
bool mask of what the row of the table says the mask means.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from dpnet.data.episode import Episode
from dpnet_runtime import Predictor
from dpnet_runtime.errors import InputError
from dpnet_runtime.masks import mask_rules_markdown
from dpnet_serve import Client

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow

CLASS = 7  # the class of the label maps
OTHER = 3  # another class in them: background for CLASS
NO_OBJECT = "has no object pixel (1 in an array, class N with a class id); 255 means ignore"
LABEL_MAP = "looks like a class-label map"
ABSENT_CLASS = f"holds no pixel of class {CLASS} (--class-id {CLASS}): it holds class {OTHER}"
NOT_AN_ARRAY_MASK = "expected 0 (background), 1 (object) or 255 (ignore), or bool"


@dataclass(frozen=True)
class Case:
    """One mask: its file, its values as an array, and what each column of the table gives.

    Attributes:
        file: the mask file's bytes (PNG, or JPEG).
        array: the file's pixel values, as a Python caller holds them.
        class_id: the class id given with it (``--class-id``, ``class_id=``, form field).
        encodes_like: a bool mask that encodes as the mask should, where it is accepted.
        file_error: the error text of the file interfaces (CLI, HTTP), or ``None``.
        array_error: the error text of the array interfaces (Predictor, Client), or ``None``.
    """

    file: bytes
    array: np.ndarray
    class_id: int | None
    encodes_like: np.ndarray | None
    file_error: str | None = None
    array_error: str | None = None


@dataclass
class Outcome:
    """What one interface gave: the error text after the mask's name, or the encoding."""

    error: str | None = None
    feeds: dict[str, np.ndarray] | None = None  # scale/tensor -> the stored support tensors
    mask: np.ndarray | None = None  # the query's mask, 0/1
    pseudo_count: int | None = None


def _png(values: np.ndarray, palette: bool = False) -> bytes:
    image = Image.fromarray(values)
    if palette:  # a VOC-style palette PNG: the pixel values are the class indices
        image.putpalette([channel for index in range(256) for channel in (index, 0, 255 - index)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def _cases(mask: np.ndarray) -> dict[str, Case]:
    """The mask set of the issue, drawn from a synthetic support mask with an ignore border."""
    objects, ignore = mask == 1, mask == 255
    assert objects.any() and ignore.any()
    label = np.where(objects, CLASS, 0).astype(np.uint8)
    label[ignore] = 255
    top = np.arange(mask.shape[0])[:, None] < mask.shape[0] // 4
    label[top & (label == 0)] = OTHER
    assert (label == OTHER).any()
    absent = np.where(label == CLASS, OTHER, label).astype(np.uint8)  # only other and ignore
    jpeg = _jpeg(objects.astype(np.uint8) * 255)
    grey = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert ((grey > 1) & (grey < 254)).any(), "the JPEG needs grey edges"
    return {
        "0-1": Case(_png(objects.astype(np.uint8)), objects.astype(np.uint8), None, objects),
        "0-255": Case(
            _png(objects.astype(np.uint8) * 255), objects.astype(np.uint8) * 255, None, objects,
            array_error=NO_OBJECT,
        ),
        "0-1-255": Case(_png(mask), mask, None, objects),
        "grey-jpeg-edges": Case(jpeg, grey, None, grey > 127, array_error=NOT_AN_ARRAY_MASK),
        "label-map-with-class-id": Case(_png(label, palette=True), label, CLASS, objects),
        "label-map-without-class-id": Case(
            _png(label, palette=True), label, None, None, file_error=LABEL_MAP,
            array_error=LABEL_MAP,
        ),
        "all-ignore": Case(
            _png(absent, palette=True), absent, CLASS, None, file_error=ABSENT_CLASS,
            array_error=ABSENT_CLASS,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def store_server(
    balanced_export_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Path]]:
    """A dpnet-serve whose classes are files: ``<store>/<key>.npz`` holds each support set."""
    store = tmp_path_factory.mktemp("store")
    server = start_server(balanced_export_dir, "--store", str(store), "--threads", "1")
    yield server, store
    stop_server(server)


@pytest.fixture(scope="module")
def scene(
    episodes: list[Episode], balanced_export_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The support image and query (arrays, and PNG files for the CLI), the export, the cases."""
    episode = episodes[0]
    folder = tmp_path_factory.mktemp("scene")
    image, query = episode.support_images[0], episode.query_image
    Image.fromarray(image).save(folder / "support.png")
    Image.fromarray(query).save(folder / "query.png")
    cases = _cases(episode.support_masks[0])
    return {"image": image, "query": query, "folder": folder, "export": balanced_export_dir,
            "cases": cases}  # fmt: skip


def _reason(message: str, *names: str) -> str:
    """The error line without its ``error:`` prefix and the mask's name."""
    line = message.strip().removeprefix("error: ")
    assert "\n" not in line, message
    for name in names:
        if line.startswith(f"{name} "):
            return line.removeprefix(f"{name} ")
    return line


def _stored(store: Path, key: str) -> dict[str, np.ndarray]:
    with np.load(store / f"{key}.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _feeds(predictor: Predictor, image: np.ndarray, mask: np.ndarray, **kw: Any) -> dict[str, Any]:
    support = predictor.encode_support([image], [mask], **kw)
    return {f"{scale}/{k}": v for scale, feed in enumerate(support.feeds) for k, v in feed.items()}


def _by_cli(scene: dict[str, Any], name: str, case: Case) -> Outcome:
    folder: Path = scene["folder"] / name
    folder.mkdir()
    mask_file = folder / ("mask.jpg" if case.file[:2] == b"\xff\xd8" else "mask.png")
    mask_file.write_bytes(case.file)
    options = [] if case.class_id is None else ["--class-id", str(case.class_id)]
    completed = subprocess.run(
        [
            sys.executable, "-m", "dpnet_runtime", "--model", str(scene["export"]),
            "--support", f"{scene['folder'] / 'support.png'}:{mask_file}",
            "--query", str(scene["folder"] / "query.png"), "--out", str(folder / "out.png"),
            "--json", str(folder / "out.json"), "--threads", "1", *options,
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        assert completed.returncode == 1, completed.stderr
        return Outcome(error=_reason(completed.stderr, f"mask {mask_file}", "support mask 1"))
    result = json.loads((folder / "out.json").read_text())["queries"][0]
    mask = np.asarray(Image.open(folder / "out.png"))
    return Outcome(mask=(mask > 0).astype(np.uint8), pseudo_count=result["pseudo_count"])


def _by_http(scene: dict[str, Any], server: tuple[Server, Path], name: str, case: Case) -> Outcome:
    url, store = server[0].url, server[1]
    support = [("images", _png(scene["image"])), ("masks", case.file)]
    fields = {} if case.class_id is None else {"class_id": str(case.class_id)}
    registered = requests.post(
        f"{url}/classes/http-{name}", files=support, data=fields, timeout=120
    )
    episode = requests.post(
        f"{url}/episode", files=[*support, ("image", _png(scene["query"]))], data=fields,
        timeout=120,
    )  # fmt: skip
    if registered.status_code != 201:
        assert registered.status_code == 400 and episode.status_code == 400, registered.text
        reasons = {
            _reason(answer.json()["error"], "support mask 1") for answer in (registered, episode)
        }
        assert len(reasons) == 1, reasons
        return Outcome(error=reasons.pop())
    assert episode.status_code == 200, episode.text
    mask = np.asarray(Image.open(io.BytesIO(episode.content)))
    return Outcome(feeds=_stored(store, registered.json()["key"]), mask=(mask > 0).astype(np.uint8))


def _by_predictor(scene: dict[str, Any], predictor: Predictor, case: Case) -> Outcome:
    try:
        support = predictor.encode_support([scene["image"]], [case.array], class_id=case.class_id)
    except InputError as exc:
        return Outcome(error=_reason(str(exc), "support mask 1"))
    result = predictor.segment(scene["query"], support)
    feeds = _feeds(predictor, scene["image"], case.array, class_id=case.class_id)
    return Outcome(feeds=feeds, mask=result.mask, pseudo_count=result.pseudo_count)


def _by_client(
    scene: dict[str, Any], server: tuple[Server, Path], name: str, case: Case
) -> Outcome:
    with Client(server[0].url, timeout_s=120) as client:
        reasons = set()
        try:
            info = client.register(
                f"client-{name}", [scene["image"]], [case.array], class_id=case.class_id
            )
        except InputError as exc:
            reasons.add(_reason(str(exc), "support mask 1"))
        try:
            mask = client.episode(
                [scene["image"]], [case.array], scene["query"], class_id=case.class_id
            )
        except InputError as exc:
            reasons.add(_reason(str(exc), "support mask 1"))
    if reasons:
        assert len(reasons) == 1, reasons
        return Outcome(error=reasons.pop())
    return Outcome(feeds=_stored(server[1], info.key), mask=mask)


def _assert_encoded_like(
    outcomes: dict[str, Outcome], expected: dict[str, np.ndarray], result: Any
) -> None:
    for interface, outcome in outcomes.items():
        assert outcome.error is None, (interface, outcome.error)
        if outcome.feeds is not None:
            assert outcome.feeds.keys() == expected.keys(), interface
            for tensor, value in expected.items():
                np.testing.assert_allclose(
                    outcome.feeds[tensor], value, rtol=1e-5, atol=1e-6, err_msg=interface
                )
        np.testing.assert_array_equal(outcome.mask, result.mask, err_msg=interface)
        if outcome.pseudo_count is not None:
            assert outcome.pseudo_count == result.pseudo_count, interface


def _assert_same_error(outcomes: dict[str, Outcome], error: str) -> str | None:
    reasons = {interface: outcome.error for interface, outcome in outcomes.items()}
    assert len(set(reasons.values())) == 1, reasons
    reason = next(iter(reasons.values()))
    assert reason is not None and error in reason, reasons
    return reason


@pytest.mark.parametrize(
    "name",
    [
        "0-1", "0-255", "0-1-255", "grey-jpeg-edges", "label-map-with-class-id",
        "label-map-without-class-id", "all-ignore",
    ],
)  # fmt: skip
def test_the_same_mask_gives_the_same_support_or_error_everywhere(
    name: str,
    scene: dict[str, Any],
    store_server: tuple[Server, Path],
    predictor: Predictor,
) -> None:
    case = scene["cases"][name]
    files = {
        "dpnet-segment": _by_cli(scene, name, case),
        "HTTP": _by_http(scene, store_server, name, case),
    }
    arrays = {
        "Predictor": _by_predictor(scene, predictor, case),
        "Client": _by_client(scene, store_server, name, case),
    }
    if case.encodes_like is None:  # refused everywhere, with one line whichever the interface
        assert case.file_error is not None and case.array_error is not None
        file_reason = _assert_same_error(files, case.file_error)
        assert _assert_same_error(arrays, case.array_error) == file_reason
        return
    expected = _feeds(predictor, scene["image"], case.encodes_like)
    result = predictor.segment(
        scene["query"], predictor.encode_support([scene["image"]], [case.encodes_like])
    )
    for outcomes, error in ((files, case.file_error), (arrays, case.array_error)):
        if error is None:
            _assert_encoded_like(outcomes, expected, result)
        else:  # an array the table refuses: Predictor and the Client say the same line,
            _assert_same_error(outcomes, error)
            # and the fix it names, (mask > 127), is the mask the file interfaces encoded.
            np.testing.assert_array_equal(case.array > 127, case.encodes_like)


def test_the_encodings_compared_tell_ignore_from_object(
    scene: dict[str, Any], predictor: Predictor, episodes: list[Episode]
) -> None:
    """The comparison above can fail: reading the ignore border as object (the misreading a
    0/1/255 mask risks) changes the support tensors and the query's result."""
    mask = episodes[0].support_masks[0]
    right, wrong = mask == 1, mask != 0
    assert any(
        not np.allclose(value, _feeds(predictor, scene["image"], wrong)[tensor], atol=1e-6)
        for tensor, value in _feeds(predictor, scene["image"], right).items()
    )
    results = [
        predictor.segment(scene["query"], predictor.encode_support([scene["image"]], [bools]))
        for bools in (right, wrong)
    ]
    assert results[0].pseudo_count != results[1].pseudo_count or not np.array_equal(
        results[0].mask, results[1].mask
    )


def test_the_api_page_shows_the_mask_table_and_the_class_id_field(
    store_server: tuple[Server, Path],
) -> None:
    schema = requests.get(f"{store_server[0].url}/openapi.json", timeout=60).json()
    for path in ("/classes/{name}", "/episode"):
        operation = schema["paths"][path]["post"]
        assert mask_rules_markdown().strip() in operation["description"], path
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        fields = schema["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"]
        assert {"images", "masks", "class_id"} <= set(fields), path
