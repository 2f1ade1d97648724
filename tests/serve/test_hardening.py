"""dpnet-serve against a hostile or unlucky client, on a real server on 127.0.0.1: the token,
Host and Origin checks, body and image limits, idle keep-alive connections, decompression
bombs, stalled uploads, a full queue, internal errors, a store that cannot be written, a class
replaced under load, and the Prometheus metrics. Every error is checked to be JSON with its
code.

One server for the module: a token, a folder store, one query-head replica of one thread,
batches of 2, 2 queued queries at most, a 6 s request timeout, a 3 s keep-alive timeout and a
4 MiB body limit.
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from dpnet.data.episode import Episode
from dpnet_runtime import Predictor
from dpnet_runtime.errors import InputError
from dpnet_serve import Client
from dpnet_serve.api_errors import ERROR_CODES

from .conftest import (
    MAX_PIXELS,
    Server,
    assert_loopback_sockets,
    free_port,
    start_server,
    stop_server,
    support_masks,
    unwritable,
)

pytestmark = pytest.mark.slow

TOKEN = "t0ken-for-the-hardening-tests-0123456789"
BODY_LIMIT = 4 * 1024 * 1024
TIMEOUT_S = 6.0
KEEP_ALIVE_S = 3
STALLED = 300


@dataclass
class Guarded:
    server: Server
    store: Path
    metrics_port: int
    token_file: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])


@pytest.fixture(scope="module")
def guarded(
    balanced_export_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guarded]:
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "token").write_text(TOKEN + "\n")
    metrics_port = free_port()
    server = start_server(
        balanced_export_dir,
        "--token-file", str(folder / "token"), "--store", str(folder / "store"),
        "--replicas", "1", "--threads", "1", "--max-batch", "2", "--max-queued-requests", "2",
        "--request-timeout-s", str(TIMEOUT_S), "--max-body-bytes", str(BODY_LIMIT),
        "--keep-alive-timeout-s", str(KEEP_ALIVE_S),
        "--max-image-pixels", str(MAX_PIXELS), "--metrics-port", str(metrics_port),
        environment={"RAY_metrics_report_interval_ms": "1000"},
    )  # fmt: skip
    try:
        with Client(server.url, token=TOKEN, timeout_s=120) as client:
            deadline = time.monotonic() + 120
            while not client.ready() and time.monotonic() < deadline:
                time.sleep(0.5)
        yield Guarded(server, folder / "store", metrics_port, folder / "token")
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def client(guarded: Guarded) -> Iterator[Client]:
    with Client(guarded.url, token=TOKEN, timeout_s=120) as opened:
        yield opened


def _error(answer: requests.Response, status: int, code: str) -> str:
    """The message of a JSON error answer, after checking its status, type and code."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json", answer.headers
    body = answer.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    assert ERROR_CODES[code][0] == status
    return str(body["error"])


def _png(pixels: np.ndarray, **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _auth(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def _register(client: Client, name: str, episode: Episode) -> np.ndarray:
    client.register(name, list(episode.support_images), support_masks(episode), replace=True)
    return episode.query_image


def _expected(predictor: Predictor, episode: Episode, query: np.ndarray) -> np.ndarray:
    support = predictor.encode_support(list(episode.support_images), support_masks(episode))
    return predictor.segment(query, support).mask


def test_the_token_host_and_origin_checks_answer_json(
    guarded: Guarded, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    url = guarded.url
    query = _register(client, "cat", episodes[0])
    np.testing.assert_array_equal(
        client.segment("cat", query), _expected(predictor, episodes[0], query)
    )
    for probe in ("/healthz", "/readyz"):  # probes need no token
        assert requests.get(url + probe, timeout=60).status_code == 200
    answer = requests.get(f"{url}/classes", timeout=60)
    assert "need the server's token" in _error(answer, 401, "unauthorized")
    assert answer.headers["www-authenticate"].startswith("Bearer")
    wrong = requests.get(f"{url}/classes", headers={"Authorization": "Bearer nope"}, timeout=60)
    _error(wrong, 401, "unauthorized")
    _error(requests.delete(f"{url}/classes/cat", timeout=60), 401, "unauthorized")
    with Client(url, timeout_s=60) as anonymous, pytest.raises(InputError, match="HTTP 401"):
        anonymous.segment("cat", query)
    evil = requests.get(f"{url}/classes", headers=_auth(Host="evil.example"), timeout=60)
    assert "--allowed-hosts evil.example" in _error(evil, 403, "forbidden_host")
    cross = requests.post(
        f"{url}/classes/cat/segment", files={"image": _png(query)},
        headers=_auth(Origin="http://evil.example"), timeout=60,
    )  # fmt: skip
    _error(cross, 403, "forbidden_origin")
    assert [info.name for info in client.classes()] == ["cat"]  # nothing got through


def _raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(head.encode("latin-1") + body)
    return connection


def _head(port: int, path: str, length: int) -> str:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n\r\n"
    )


def _read_answer(connection: socket.socket, timeout_s: float) -> tuple[int, dict[str, Any]]:
    connection.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body)


def test_a_body_over_the_limit_is_refused_before_it_arrives(guarded: Guarded) -> None:
    length = 200 * 1024 * 1024
    began = time.monotonic()
    connection = _raw_request(guarded.port, _head(guarded.port, "/classes/cat/segment", length),
                              b"--xyz\r\n" + b"\0" * 65536)  # fmt: skip
    try:
        status, body = _read_answer(connection, 30)
    finally:
        connection.close()
    assert (status, body["code"]) == (413, "body_too_large"), body
    assert f"up to {BODY_LIMIT}" in body["error"]
    assert time.monotonic() - began < 10  # answered from the headers: 200 MB never came
    # A client that sends the whole body anyway is cut off, and nothing is kept.
    front = [p for p in guarded.server.processes() if _title(p, ("ProxyActor", ":Ingress"))]
    before = sum(process.memory_info().rss for process in front)
    for _ in range(3):
        connection = _raw_request(guarded.port, _head(guarded.port, "/classes/cat/segment", length))
        sent = 0
        try:
            while sent < length:
                sent += connection.send(b"\0" * (1 << 20))
        except OSError:  # the server closed the connection: it stopped reading
            pass
        finally:
            connection.close()
        assert sent < length // 2, sent
    grown = sum(process.memory_info().rss for process in front) - before
    assert grown < 64 * 1024 * 1024, grown


def _title(process: psutil.Process, keys: tuple[str, ...]) -> bool:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return any(key in title for key in keys)


def test_idle_keep_alive_connections_are_closed(guarded: Guarded) -> None:
    connection = socket.create_connection(("127.0.0.1", guarded.port), timeout=30)
    try:
        connection.sendall(
            f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{guarded.port}\r\n\r\n".encode()
        )
        assert _read_answer(connection, 30) == (200, {"status": "ok"})
        began = time.monotonic()
        connection.settimeout(KEEP_ALIVE_S + 30)
        assert connection.recv(1) == b""  # closed by the server once idle
        assert KEEP_ALIVE_S - 1 <= time.monotonic() - began < KEEP_ALIVE_S + 30
    finally:
        connection.close()


def test_decompression_bombs_are_400_and_huge_images_413_with_the_servers_limit(
    guarded: Guarded, client: Client, episodes: list[Episode]
) -> None:
    _register(client, "cat", episodes[0])
    segment = f"{guarded.url}/classes/cat/segment"
    bomb = _png(np.zeros((8, 8, 3), np.uint8), icc_profile=b"\0" * (100 * 1024 * 1024))
    answer = requests.post(segment, files={"image": bomb}, headers=_auth(), timeout=60)
    assert "decode budget" in _error(answer, 400, "invalid_image")
    huge = io.BytesIO()
    Image.new("1", (20000, 20000)).save(huge, format="PNG")
    answer = requests.post(segment, files={"image": huge.getvalue()}, headers=_auth(), timeout=60)
    message = _error(answer, 413, "image_too_large")
    assert f"at most {MAX_PIXELS} pixels" in message and "20000x20000" in message


def test_stalled_uploads_hold_up_nobody_and_time_out_as_json(
    guarded: Guarded, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    query = _register(client, "cat", episodes[0])
    want = _expected(predictor, episodes[0], query)
    stalled = []
    try:
        for _ in range(STALLED):  # headers and a little body, then nothing
            head = _head(guarded.port, "/classes/cat/segment", 100_000)
            stalled.append(_raw_request(guarded.port, head, b"--xyz\r\n"))
        time.sleep(1.0)  # the proxy has handed them all to the ingress
        began = time.monotonic()
        assert requests.get(f"{guarded.url}/healthz", timeout=30).status_code == 200
        health_s = time.monotonic() - began
        began = time.monotonic()
        np.testing.assert_array_equal(client.segment("cat", query), want)
        segment_s = time.monotonic() - began
        assert health_s < 1.0 and segment_s < 1.0, (health_s, segment_s)
        # The deadline ends them: each gets a JSON 408 (body never arrived).
        for connection in stalled[:10]:
            status, body = _read_answer(connection, TIMEOUT_S + 30)
            assert (status, body["code"]) == (408, "request_timeout"), body
    finally:
        for connection in stalled:
            connection.close()


def test_a_full_queue_answers_503_with_retry_after(
    guarded: Guarded, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    query = _register(client, "cat", episodes[0])
    want = _expected(predictor, episodes[0], query)
    data = _png(query)
    outcomes: list[tuple[int, str]] = []

    def one(_: int) -> tuple[int, str]:
        answer = requests.post(f"{guarded.url}/classes/cat/segment", files={"image": data},
                               headers=_auth(), timeout=120)  # fmt: skip
        if answer.status_code == 200:
            same = np.array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) // 255, want)
            return 200, "same" if same else "wrong mask"
        _error(answer, 503, "overloaded")
        assert answer.headers["retry-after"] == "1"
        return 503, "overloaded"

    for _ in range(3):  # bursts of 24 at once against 4 running + 2 queued
        with ThreadPoolExecutor(max_workers=24) as pool:
            outcomes += list(pool.map(one, range(24)))
        if any(status == 503 for status, _ in outcomes):
            break
    assert {outcome for outcome in outcomes} <= {(200, "same"), (503, "overloaded")}
    assert (503, "overloaded") in outcomes and (200, "same") in outcomes


def test_an_internal_error_quotes_an_id_and_leaks_nothing(
    guarded: Guarded, client: Client, episodes: list[Episode]
) -> None:
    query = _register(client, "broken", episodes[1])
    info = client.info("broken")
    (guarded.store / f"{info.key}.npz").write_bytes(b"not a numpy archive")  # a damaged disk
    answer = requests.post(f"{guarded.url}/classes/broken/segment", files={"image": _png(query)},
                           headers=_auth(), timeout=60)  # fmt: skip
    message = _error(answer, 500, "internal_error")
    match = re.fullmatch(r"internal error ([0-9a-f]{8}); the server's log has the details", message)
    assert match, message
    for leak in ("Traceback", "/", "pid", "npz", "Ray", "\x1b"):
        assert leak not in answer.text, leak
    logged = "".join(
        path.read_text(errors="replace")
        for path in guarded.server.ray_dir.rglob("*")
        if path.is_file() and path.suffix in (".log", ".err", ".out")
    )
    assert f"internal error {match.group(1)}" in logged
    client.delete("broken")


def test_a_store_that_cannot_be_written_changes_nothing(
    guarded: Guarded, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    query = _register(client, "cat", episodes[0])
    want = _expected(predictor, episodes[0], query)
    before = client.info("cat")
    index = (guarded.store / "index.json").read_text()
    url = guarded.url
    with unwritable(guarded.store):
        pair = [("images", _png(episodes[2].support_images[0])),
                ("masks", _png(support_masks(episodes[2])[0] * 255))]  # fmt: skip
        for path in ("/classes/new", "/classes/cat?replace=true"):
            answer = requests.post(url + path, files=pair, headers=_auth(), timeout=120)
            assert "nothing changed" in _error(answer, 507, "store_failed")
        answer = requests.delete(f"{url}/classes/cat", headers=_auth(), timeout=60)
        assert "/" not in _error(answer, 507, "store_failed")  # no server path
        assert client.info("cat") == before
        assert "new" not in [info.name for info in client.classes()]
        np.testing.assert_array_equal(client.segment("cat", query), want)
    assert (guarded.store / "index.json").read_text() == index
    client.delete("cat")  # writable again
    assert "cat" not in [info.name for info in client.classes()]


def test_replacing_a_class_under_load_never_answers_404(
    guarded: Guarded, client: Client, predictor: Predictor, episodes: list[Episode]
) -> None:
    first, second = episodes[1], episodes[2]
    query = _register(client, "swap", first)
    allowed = [_expected(predictor, first, query), _expected(predictor, second, query)]
    assert not np.array_equal(*allowed)
    problems: list[str] = []
    done = threading.Event()

    def load() -> None:
        with Client(guarded.url, token=TOKEN, timeout_s=120) as own:
            while not done.is_set():
                try:
                    mask = own.segment("swap", query)
                except Exception as exc:
                    problems.append(str(exc))
                    continue
                if not any(np.array_equal(mask, option) for option in allowed):
                    problems.append("a mask of neither support set")

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for episode in (second, first, second, first):
            client.register("swap", list(episode.support_images), support_masks(episode),
                            replace=True)  # fmt: skip
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=300)
    assert problems == []


def test_metrics_reach_prometheus(
    guarded: Guarded, client: Client, episodes: list[Episode]
) -> None:
    query = _register(client, "metered", episodes[3])
    for _ in range(3):
        client.segment("metered", query)
    requests.get(f"{guarded.url}/classes/metered", timeout=60)  # 401: an error
    wanted = (
        r'ray_dpnet_requests_total\{[^}]*class_name="metered"[^}]*route="/classes/\{name\}/segment"',
        r'ray_dpnet_request_errors_total\{[^}]*status="401"',
        r'ray_dpnet_request_latency_ms_bucket\{[^}]*class_name="metered"',
        r'ray_dpnet_support_cache_misses_total\{[^}]*class_name="metered"',
        r'ray_dpnet_support_cache_hits_total\{[^}]*class_name="metered"',
    )
    deadline, text = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{guarded.metrics_port}/metrics", timeout=30).text
        if all(re.search(pattern, text) for pattern in wanted):
            break
        time.sleep(2)
    missing = [pattern for pattern in wanted if not re.search(pattern, text)]
    assert missing == [], [line for line in text.splitlines() if "dpnet" in line][:20]


def test_its_sockets_stay_on_loopback(guarded: Guarded) -> None:
    assert_loopback_sockets(guarded.server.processes())


def test_the_load_test_runs_against_a_token_server(
    guarded: Guarded, balanced_export_dir: Path, tmp_path: Path
) -> None:
    report = tmp_path / "serve.json"
    command = [
        sys.executable, "-c", "from dpnet_bench.scripts import bench; bench()", "serve",
        "--model", str(balanced_export_dir), "--url", guarded.url,
        "--token-file", str(guarded.token_file), "--requests", "3", "--concurrency", "2",
        "--warmup-requests", "0", "--threads", "1", "--json", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["results"]
    assert [(row["errors"], row["mask_mismatches"]) for row in rows] == [(0, 0), (0, 0)]
