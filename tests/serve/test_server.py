"""dpnet-serve end to end: a real local Ray Serve on 127.0.0.1 with a tiny balanced export.

One server (two query-head replicas, the session's ``server`` fixture) serves every test; the
replica-kill test runs last. Expected masks come from an in-process Predictor on the same
export and inputs.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from dpnet.data.episode import Episode
from dpnet_runtime import Predictor
from dpnet_runtime.errors import DpnetError, InputError
from dpnet_serve import Client

from .conftest import MAX_SHOTS, Server, assert_loopback_sockets, support_masks

pytestmark = pytest.mark.slow


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, timeout_s=120) as opened:
        assert _wait(opened.ready, 120), "the server never became ready"
        yield opened


def _wait(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _queries(episodes: list[Episode]) -> list[np.ndarray]:
    # The episodes' queries, plus crops so that the sizes differ from the model's.
    images = [episode.query_image for episode in episodes]
    return [*images, images[0][:100, 10:], np.ascontiguousarray(images[1][::-1, :90])]


def _expected(
    predictor: Predictor, episode: Episode, queries: list[np.ndarray]
) -> list[np.ndarray]:
    support = predictor.encode_support(list(episode.support_images), support_masks(episode))
    masks = [predictor.segment(query, support).mask for query in queries]
    assert any(0 < mask.sum() < mask.size for mask in masks), "test needs non-trivial masks"
    return masks


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _counters_settle(client: Client, key: str, value: int) -> dict[str, Any]:
    # Replicas report counts in the background, a moment after they answer.
    _wait(lambda: client.stats()[key] >= value, 10)
    return client.stats()


def test_register_list_segment_delete_match_the_in_process_predictor(
    client: Client, server: Server, predictor: Predictor, episodes: list[Episode]
) -> None:
    episode = episodes[0]
    queries = _queries(episodes)
    expected = _expected(predictor, episode, queries)
    before = client.stats()
    info = client.register("cat", list(episode.support_images), support_masks(episode))
    assert (info.name, info.shots) == ("cat", 2) and info.encode_ms > 0
    assert [c.name for c in client.classes()] == ["cat"] and client.info("cat") == info
    for query, want in zip(queries, expected, strict=True):
        np.testing.assert_array_equal(client.segment("cat", query), want)
    # JSON answer: the object pixel count and COCO RLE of the same mask.
    answer = requests.post(
        f"{server.url}/classes/cat/segment",
        files={"image": ("q.png", _png(queries[-1]), "image/png")},
        headers={"Accept": "application/json"},
        timeout=60,
    )
    body = answer.json()
    assert answer.status_code == 200 and body["object_pixels"] == int(expected[-1].sum())
    height, width = body["rle"]["size"]
    flat = np.repeat(np.arange(len(body["rle"]["counts"])) % 2, body["rle"]["counts"])
    np.testing.assert_array_equal(flat.reshape(width, height).T, expected[-1])
    # A one-call episode stores nothing and equals the in-process episode.
    want = predictor.run_episode(list(episode.support_images), support_masks(episode), queries[0])
    got = client.episode(list(episode.support_images), support_masks(episode), queries[0])
    np.testing.assert_array_equal(got, want.mask)
    # The support graph ran once, at registration; every query ran the query graph only.
    segmented = len(queries) + 1
    stats = _counters_settle(client, "queries", before["queries"] + segmented)
    assert stats["support_graph_runs"] - before["support_graph_runs"] == 1
    assert stats["queries"] - before["queries"] == segmented
    assert stats["episodes"] - before["episodes"] == 1
    # Registering again under the same name serves the new support set from then on.
    other = episodes[2]
    replaced = client.register(
        "cat", list(other.support_images), support_masks(other), replace=True
    )
    assert replaced.key != info.key
    want_other = _expected(predictor, other, queries[:1])[0]
    assert not np.array_equal(want_other, expected[0])  # the check below can tell them apart
    np.testing.assert_array_equal(client.segment("cat", queries[0]), want_other)
    client.delete("cat")
    assert client.classes() == []
    with pytest.raises(InputError, match="HTTP 404: no class 'cat' is registered"):
        client.segment("cat", queries[0])


def test_eight_concurrent_clients_get_every_mask_right(
    server: Server, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    queries = _queries(episodes)
    expected = {}
    for name, episode in (("one", episodes[1]), ("two", episodes[2])):
        client.register(name, list(episode.support_images), support_masks(episode), replace=True)
        expected[name] = _expected(predictor, episode, queries)
    before = client.stats()

    def worker(thread: int) -> list[str]:
        problems = []
        with Client(server.url, timeout_s=120) as own:
            for request in range(20):
                name = ("one", "two")[(thread + request) % 2]
                index = (thread * 20 + request) % len(queries)
                try:
                    mask = own.segment(name, queries[index])
                except DpnetError as exc:
                    problems.append(f"{name}/{index}: {exc}")
                    continue
                if not np.array_equal(mask, expected[name][index]):
                    problems.append(f"{name}/{index}: wrong mask")
        return problems

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [problem for found in pool.map(worker, range(8)) for problem in found]
    assert problems == []
    stats = _counters_settle(client, "queries", before["queries"] + 160)
    assert stats["queries"] - before["queries"] == 160
    assert stats["support_graph_runs"] == before["support_graph_runs"]  # never re-encoded
    batches = {int(size): count for size, count in stats["batch_sizes"].items()}
    assert sum(size * count for size, count in batches.items()) == stats["queries"]
    assert max(batches) <= 4  # --max-batch


def test_every_bad_request_gets_its_4xx_json_and_the_server_keeps_serving(
    server: Server, client: Client, episodes: list[Episode]
) -> None:
    episode = episodes[3]
    image, mask = episode.support_images[0], support_masks(episode)[0]
    client.register("good", [image], [mask], replace=True)
    url = server.url
    small = np.zeros((20, 30), np.uint8)
    small[5:10, 5:10] = 1

    def register(name: str, pairs: list[tuple[bytes, bytes]], **params: str) -> requests.Response:
        files = [f for pair in pairs for f in (("images", pair[0]), ("masks", pair[1]))]
        return requests.post(f"{url}/classes/{name}", files=files, params=params, timeout=60)

    def segment(name: str, data: bytes) -> requests.Response:
        return requests.post(f"{url}/classes/{name}/segment", files={"image": data}, timeout=60)

    good_pair = (_png(image), _png(mask * 255))
    cases = {
        "bad image bytes": (segment("good", b"\x89PNG not really"), 400, "image is not an image"),
        "oversized image": (
            segment("good", _png(np.zeros((201, 200, 3), np.uint8))), 413, "at most 40000 pixels",
        ),
        "mask of the wrong size": (
            register("bad", [(_png(image), _png(small))]), 400, r"mask 1 is \[20, 30\] but",
        ),
        "mask without object": (
            register("bad", [(_png(image), _png(mask * 0))]), 400, "mask 1 has no object pixel",
        ),
        "label map without class_id": (
            register("bad", [(_png(image), _png(mask * 7))]), 400,
            r"support mask 1 looks like a class-label map \(values \[0, 7\]\).*class_id=N",
        ),
        "too many shots": (
            register("bad", [good_pair] * (MAX_SHOTS + 1)), 400, "too many shots: got 4",
        ),
        "images and masks differ": (
            requests.post(f"{url}/classes/bad", timeout=60,
                          files=[("images", good_pair[0]), ("images", good_pair[0]),
                                 ("masks", good_pair[1])]),
            400, "got 2 images but 1 masks",
        ),
        "unknown class": (segment("nobody", _png(image)), 404, "no class 'nobody'"),
        "duplicate name": (register("good", [good_pair]), 409, "replace=true"),
        "bad class name": (register("no$name", [good_pair]), 422, "malformed request"),
        "missing file": (requests.post(f"{url}/classes/good/segment", timeout=60), 422, "image"),
        "unknown route": (requests.get(f"{url}/nowhere", timeout=60), 404, "Not Found"),
    }  # fmt: skip
    for case, (answer, status, message) in cases.items():
        assert answer.status_code == status, (case, answer.text)
        assert answer.headers["content-type"] == "application/json", case
        error = answer.json()["error"]
        assert re.search(message, error), (case, error)
        assert segment("good", _png(image)).status_code == 200, f"no good answer after {case}"
    assert "bad" not in [info.name for info in client.classes()]
    # ?replace=true registers over an existing name, with a new key.
    old = client.info("good")
    replaced = register("good", [good_pair], replace="true")
    assert replaced.status_code == 201 and replaced.json()["key"] != old.key


def test_health_and_the_openapi_page(server: Server) -> None:
    assert requests.get(f"{server.url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{server.url}/readyz", timeout=30).json() == {"status": "ready"}
    paths = requests.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
    assert {"/classes", "/classes/{name}", "/classes/{name}/segment", "/episode"} <= set(paths)


def test_the_server_and_its_ray_processes_use_loopback_sockets_only(server: Server) -> None:
    assert_loopback_sockets(server.processes())


def test_a_killed_query_replica_is_restarted_and_later_requests_succeed(
    server: Server, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    episode = episodes[1]
    queries = _queries(episodes)
    client.register("fault", list(episode.support_images), support_masks(episode), replace=True)
    expected = _expected(predictor, episode, queries)
    replicas = server.replica_pids("QueryHead")
    assert len(replicas) == 2
    outcomes: list[str] = []  # "ok", "wrong mask", or the error of each request, in order

    def load() -> None:
        with Client(server.url, timeout_s=60) as own:
            for index in range(40):
                query, want = queries[index % len(queries)], expected[index % len(queries)]
                try:
                    mask = own.segment("fault", query)
                except DpnetError as exc:
                    outcomes.append(f"error: {exc}")
                    continue
                outcomes.append("ok" if np.array_equal(mask, want) else "wrong mask")

    loader = threading.Thread(target=load)
    loader.start()
    assert _wait(lambda: len(outcomes) >= 5, 60)
    killed_at = len(outcomes)
    psutil.Process(replicas[0]).kill()  # mid-load
    loader.join(timeout=300)
    assert not loader.is_alive() and len(outcomes) == 40
    # Before the kill every answer is right; after it an answer may fail (a request the killed
    # replica held, or routed to it before Ray Serve noticed) but is never wrong, and the
    # other replica keeps serving: most requests still succeed.
    assert outcomes[:killed_at] == ["ok"] * killed_at, outcomes
    assert "wrong mask" not in outcomes, outcomes
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    assert len(failed) <= 10, failed
    # Serve starts a new replica; then every request succeeds with the right mask.
    assert _wait(lambda: len(server.replica_pids("QueryHead")) == 2 and client.ready(), 120), (
        server.replica_pids("QueryHead")
    )
    assert replicas[0] not in server.replica_pids("QueryHead")
    for query, want in zip(queries, expected, strict=True):
        np.testing.assert_array_equal(client.segment("fault", query), want)
