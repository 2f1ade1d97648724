"""dpnet-serve --address joins a Ray cluster it did not start.

The cluster is a Ray head on 127.0.0.1 with token authentication (Ray's default for a new
cluster), started here by a Python process of the test's own, as another job on a shared
cluster would be; its token is the test's own, given by environment, never written to
``~/.ray``. The server deploys onto it, answers with the in-process masks, keeps every socket on
loopback, and on exit removes its application while the head keeps running. Without the token
the server stops with one line. The head is stopped by SIGTERM to its PID, then whatever it
started, by PID.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from dpnet.data.episode import Episode
from dpnet_runtime import Predictor
from dpnet_serve import Client

from .conftest import (
    Head,
    Server,
    assert_loopback_sockets,
    replica_pids,
    start_server,
    stop_server,
    support_masks,
)

pytestmark = pytest.mark.slow


def test_serve_joins_a_cluster_and_leaves_it_running(
    head: Head, balanced_export_dir: Path, predictor: Predictor, episodes: list[Episode]
) -> None:
    assert head.address.startswith("127.0.0.1:")
    server: Server = start_server(
        balanced_export_dir, "--address", head.address, "--threads", "1", environment=head.token
    )
    try:
        assert any("starting Ray at 127.0.0.1:" in line for line in server.lines)
        episode, queries = episodes[0], [e.query_image for e in episodes]
        support = predictor.encode_support(list(episode.support_images), support_masks(episode))
        with Client(server.url, timeout_s=120) as client:
            client.register("joined", list(episode.support_images), support_masks(episode))
            for query in queries:
                expected = predictor.segment(query, support).mask
                np.testing.assert_array_equal(client.segment("joined", query), expected)
        # Serve's actors are the head's: its process tree holds the replicas, not the server's.
        # One replica: the ingress runs the model; it is the head's, not the server's process.
        assert replica_pids(head.processes(), "Ingress"), "no dpnet replica runs on the cluster"
        assert_loopback_sockets(head.processes() + server.processes())
    finally:
        code = stop_server(server)
    assert code == 0, "".join(server.lines[-30:])
    assert head.process.poll() is None, "stopping the server stopped the cluster"
    # The application is gone from the cluster; Serve's proxy may answer, but not for dpnet.
    with contextlib.suppress(requests.ConnectionError):
        assert requests.get(f"{server.url}/healthz", timeout=10).status_code != 200


def test_joining_without_the_token_is_one_line(head: Head, balanced_export_dir: Path) -> None:
    command = [
        sys.executable, "-c", "from dpnet_serve.cli import main; main()",
        "--model", str(balanced_export_dir), "--address", head.address,
    ]  # fmt: skip
    # The ambient token file must not stand in for the missing one.
    environment = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/nonexistent"}
    environment.pop("RAY_AUTH_TOKEN", None)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot join the Ray cluster at {head.address}" in errors[0]
    assert "Traceback" not in done.stderr
