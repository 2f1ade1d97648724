"""dpnet-serve on a Ray cluster of two nodes, both on 127.0.0.1, made with Ray's own cluster
utilities (``ray.cluster_utils.Cluster``) in a process of the test's own.

The head node holds one CPU, the worker node one: two one-thread query heads land one on each.
Under bounded load the worker node is killed (SIGKILL to its processes, by Ray's utility):
every request must get its correct mask or a JSON 5xx (none reset: the proxy and the ingress
live on the head), the classes stay (the store is the ingress's, on the head), ``/readyz``
says not ready while Serve cannot place the lost replica, and once a new worker node joins the
replica comes back on it and ``/readyz`` is ready again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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
from dpnet_serve import Client

from .conftest import (
    Server,
    assert_loopback_sockets,
    process_tree,
    replica_pids,
    start_server,
    stop_server,
    support_masks,
    terminate_tree,
)

pytestmark = pytest.mark.slow

_WAIT_S = 240.0
# Commands on stdin: add (a worker node), remove (kill it), stop. Answers: one JSON line each.
_CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster

node_args = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "include_dashboard": False}
cluster = Cluster(initialize_head=True, head_node_args=node_args)

def raylet(node):
    return node.all_processes["raylet"][0].process.pid

print(json.dumps({"gcs": cluster.address, "raylet": raylet(cluster.head_node)}), flush=True)
worker = None
for line in sys.stdin:
    if line.strip() == "add":
        worker = cluster.add_node(**node_args)
        print(json.dumps({"raylet": raylet(worker)}), flush=True)
    elif line.strip() == "remove":
        cluster.remove_node(worker, allow_graceful=False)
        print(json.dumps({"removed": True}), flush=True)
    else:
        break
cluster.shutdown()
"""


@dataclass
class TwoNodes:
    """The process running the cluster, and how to talk to it."""

    process: subprocess.Popen[str]
    gcs: str
    head_raylet: int
    ray_dir: Path
    token: dict[str, str]

    def command(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[TwoNodes]:
    ray_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dpm{os.getpid()}"
    ray_dir.mkdir()
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex()}
    environment = {
        **os.environ, **token, "RAY_TMPDIR": str(ray_dir), "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=environment,
    )  # fmt: skip
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    nodes = TwoNodes(process, first["gcs"], first["raylet"], ray_dir, token)
    try:
        yield nodes
    finally:
        if process.poll() is None and process.stdin is not None:
            process.stdin.write("stop\n")
            process.stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=120)
        terminate_tree(process, ray_dir)


def _wait(condition: Callable[[], bool], timeout_s: float = _WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1)
    return False


def _replicas_under(raylet: int) -> list[int]:
    try:
        return replica_pids(psutil.Process(raylet).children(recursive=True), "QueryHead")
    except psutil.NoSuchProcess:
        return []


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    answer = requests.get(f"{url}/readyz", timeout=60)
    return answer.status_code, answer.json()


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_losing_a_node_under_load_loses_no_request_and_the_replica_comes_back(
    cluster: TwoNodes,
    balanced_export_dir: Path,
    predictor: Predictor,
    episodes: list[Episode],
    tmp_path: Path,
) -> None:
    worker_raylet = cluster.command("add")["raylet"]
    server: Server = start_server(
        balanced_export_dir, "--address", cluster.gcs, "--replicas", "2", "--threads", "1",
        "--max-batch", "1", "--store", str(tmp_path / "store"), environment=cluster.token,
    )  # fmt: skip
    try:
        url = server.url
        assert _wait(lambda: _readyz(url)[0] == 200), _readyz(url)
        # One query head per node; the ingress, which alone touches the store, on the head.
        head_tree = psutil.Process(cluster.head_raylet).children(recursive=True)
        assert len(_replicas_under(cluster.head_raylet)) == 1
        assert len(_replicas_under(worker_raylet)) == 1
        assert replica_pids(head_tree, "Ingress")
        episode = episodes[0]
        queries = [e.query_image for e in episodes]
        support = predictor.encode_support(list(episode.support_images), support_masks(episode))
        expected = [predictor.segment(query, support).mask for query in queries]
        bodies = [_png(query) for query in queries]
        with Client(url, timeout_s=120) as client:
            client.register("cat", list(episode.support_images), support_masks(episode))
        outcomes: list[str] = []

        segment = f"{url}/classes/cat/segment"

        def load(thread: int) -> None:
            with requests.Session() as session:
                for index in range(40):
                    query = (thread + index) % len(queries)
                    files = {"image": bodies[query]}
                    try:
                        answer = session.post(segment, files=files, timeout=120)
                    except requests.RequestException as exc:
                        outcomes.append(f"reset: {type(exc).__name__}")
                        continue
                    if answer.status_code == 200:
                        mask = np.asarray(Image.open(io.BytesIO(answer.content))) // 255
                        outcomes.append("ok" if np.array_equal(mask, expected[query]) else "wrong")
                    elif answer.status_code >= 500 and "code" in answer.json():
                        outcomes.append(f"json {answer.status_code} {answer.json()['code']}")
                    else:
                        outcomes.append(f"other {answer.status_code} {answer.text[:80]}")

        threads = [threading.Thread(target=load, args=(thread,)) for thread in range(6)]
        for thread in threads:
            thread.start()
        assert _wait(lambda: outcomes.count("ok") >= 30, 300), outcomes[-5:]
        cluster.command("remove")  # mid-load: the worker node's processes are killed
        for thread in threads:
            thread.join(timeout=600)
        assert not any(thread.is_alive() for thread in threads)
        bad = [o for o in outcomes if o != "ok" and not o.startswith("json 5")]
        assert bad == [], bad
        assert outcomes.count("ok") > len(outcomes) // 2, outcomes
        # The classes survived; /readyz says what Serve says: not ready without the replica.
        with Client(url, timeout_s=120) as client:
            assert [info.name for info in client.classes()] == ["cat"]
            np.testing.assert_array_equal(client.segment("cat", queries[0]), expected[0])
        assert _wait(lambda: _readyz(url)[0] == 503, 120), _readyz(url)
        body = _readyz(url)[1]
        assert body["code"] == "not_ready" and "Serve reports" in body["error"], body
        # A node returns: Serve places the lost replica on it, and /readyz is ready again.
        new_raylet = cluster.command("add")["raylet"]
        assert _wait(lambda: len(_replicas_under(new_raylet)) == 1), "the replica did not return"
        assert _wait(lambda: _readyz(url)[0] == 200), _readyz(url)
        with Client(url, timeout_s=120) as client:
            for query, want in zip(queries, expected, strict=True):
                np.testing.assert_array_equal(client.segment("cat", query), want)
        assert_loopback_sockets(process_tree(cluster.process) + server.processes())
    finally:
        stop_server(server)
